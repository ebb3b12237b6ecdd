//! Integration tests of the bdh library; one file per concern.

mod common;

mod golden;
