//! Integration tests of the bdh library; one file per concern.

mod common;

mod golden;
mod recurrent;
mod backward;
mod adamw;
mod checkpoint;
mod errors;
mod data;
mod generate;
mod run;
mod microscope;
