//! Playlist reading and URI rewriting (pure; no I/O).
