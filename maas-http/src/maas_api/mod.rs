//! The MaaS user API (seed 000, with seed 002's variants).

mod error;

pub use error::{GOA_ERROR, Goa, GoaError};
