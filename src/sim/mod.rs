//! A simulated Stream Video backend: API and live HLS origin.
