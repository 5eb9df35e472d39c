//! End-to-end tests that start real processes on loopback.
