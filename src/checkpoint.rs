//! Checkpoints of the projection: where they are stored ([`store`]).

pub mod store;

pub use store::{Store, StoreError};
