# Sourced by the scripts that run the binaries cargo built: prints cargo's
# target directory (CARGO_TARGET_DIR or the workspace's `target/`), so the
# scripts find the binaries wherever the user's cargo puts them.
#
#   source scripts/target-dir.sh; bin="$(cargo_target_dir)/debug"
cargo_target_dir() {
  cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}
