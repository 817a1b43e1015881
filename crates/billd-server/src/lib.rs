//! billd-server
