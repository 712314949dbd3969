//! `uniffi-bindgen`, pinned to the uniffi version of `tether-ffi` (see bindings/scripts).

fn main() {
    uniffi::uniffi_bindgen_main()
}
