//! In-process tests: one binary so the tests run in parallel against their own simulators.

#[allow(dead_code)]
mod common;
mod faults;
mod gateways;
mod market;
mod rest;
mod ws;
