//! billd-stripe
