//! The integration tests, one binary (one link on 2 cores instead of one per file): each module
//! tests one part of the product from the outside, against real etcd and real object-store
//! servers started on loopback ([`common`]).

// the helpers are `pub` for the test modules of this one crate; a failed set-up is a failed
// test, so unwrap/expect are fine here
#![allow(unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod common;

mod api_contract;
mod cluster;
mod copy;
mod damage;
mod datadir;
mod delta_snapshot;
mod drill;
mod encryption;
mod full_snapshot;
mod initialize;
mod inspect;
mod proof;
mod restore;
mod runbook;
mod server;
mod snaprev;
mod store_conformance;
