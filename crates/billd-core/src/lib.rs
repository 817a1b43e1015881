//! billd-core
