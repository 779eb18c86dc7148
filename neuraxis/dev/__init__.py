"""Developer tooling: the pinned control-plane toolchain and the local KWOK cluster."""
