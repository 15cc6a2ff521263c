# Thin wrapper: the real work lives in cargo and `cargo xtask`.
.PHONY: test verify fmt clippy doc bench-engine tidy

test:
	cargo test --workspace

fmt:
	cargo fmt --all --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

tidy:
	cargo xtask tidy

verify: fmt clippy doc test

bench-engine:
	cargo xtask bench engine
