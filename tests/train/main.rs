//! LoRA training: dataset, schedule, LoRA parameters, optimizer, checkpoints and the loop.

#[path = "../support/diffusers_fixtures.rs"]
mod diffusers_fixtures;
#[path = "../support/synthetic_checkpoint.rs"]
mod synthetic_checkpoint;

mod cache;
mod checkpoint;
mod data;
mod init;
mod learns;
mod lora;
mod optim;
mod run;
mod samples;
mod schedule;
