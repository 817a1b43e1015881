//! stripe-sim
