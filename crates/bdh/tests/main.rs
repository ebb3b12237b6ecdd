//! Integration tests of the bdh library; one file per concern.

mod common;
#[path = "../../../tests/support/skip.rs"]
mod skip;

mod adamw;
mod backward;
mod batch;
mod bpe;
mod carry;
mod checkpoint;
mod connectivity;
mod data;
mod decay;
mod delay;
mod edits;
mod ei;
mod errors;
mod generate;
mod golden;
mod gpt;
mod graph;
mod half_state;
mod hlop;
mod hostile;
mod interventions;
mod key;
mod lowrank;
mod merge;
mod microscope;
mod neuron_decay;
mod parallel;
mod population;
mod recurrent;
mod run;
mod run_dir;
mod session;
mod setup;
mod site;
mod state_format;
mod task;
mod threshold;
mod variant;
