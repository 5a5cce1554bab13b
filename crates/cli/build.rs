//! Lays out the release binary's text so the functions Causeway's own data plane runs sit
//! together (`layout/proxy-text.order`, written by `scripts/text-order`): a proxy then keeps a
//! few megabytes of the binary resident instead of most of it (the kernel maps 64 KiB around
//! every page touched). Only for release builds linked by lld (the toolchain's default linker
//! on x86_64 Linux); `CAUSEWAY_TEXT_ORDER=off` builds without it (what `scripts/text-order`
//! measures from). A name the binary no longer has is skipped: the layout degrades, the build
//! does not fail.

use std::path::Path;

fn main() {
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("layout/proxy-text.order");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=CAUSEWAY_TEXT_ORDER");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let lld_target = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    let off = std::env::var("CAUSEWAY_TEXT_ORDER").is_ok_and(|v| v == "off");
    if release && lld_target && !off && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bin=causeway=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            order.display()
        );
    }
}
