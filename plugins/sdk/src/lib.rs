//! concepts-plugin-sdk: write a `concepts` training-stage plugin in plain Rust.
//!
//! Its one job is to hide the plugin boundary. A plugin author implements one role trait —
//! [`NegativeMiner`], [`Trainer`] or [`MetadataLinker`], each enabled by the cargo feature of the same
//! role (`miner`, `trainer`, `linker`) — and calls the matching `register_*!` macro once. Key design
//! choice: the same source becomes
//!
//! - a wasm component for the `concepts:plugin` world of its role, when built with
//!   `cargo build --target wasm32-wasip2` (the SDK generates the bindings with `wit-bindgen`);
//! - a native plugin library with the C ABI of [`concepts_plugin_api::native`], when built for the
//!   host with the SDK feature `native` (loaded only with `--allow-native`);
//! - plain Rust that a host calls in-process through [`backend`] (how `concepts` runs its built-in
//!   defaults).
//!
//! Host services (logging, progress, the embedding matrices, the training engine) are reached
//! through the handles each trait method receives. Methods a plugin does not override answer
//! `` Err("`method` not implemented") ``.
//!
//! ```ignore
//! use concepts_plugin_sdk::{register_miner, MinedNegative, MiningJob, MiningParams, NegativeMiner};
//!
//! struct Nearest;
//!
//! impl NegativeMiner for Nearest {
//!     fn new() -> Self {
//!         Nearest
//!     }
//!
//!     fn mine(&mut self, job: &MiningJob<'_>, params: MiningParams) -> concepts_plugin_sdk::Result<Vec<MinedNegative>> {
//!         let top = job.positives().top_k(job.pool(), params.hard_per_positive)?;
//!         // ...
//!         # Ok(Vec::new())
//!     }
//! }
//!
//! register_miner!(Nearest);
//! ```

#![deny(missing_docs)]
// A plugin enables one role feature; without one (docs.rs, `cargo publish`'s check) the role
// plumbing has no user.
#![cfg_attr(
    not(any(feature = "miner", feature = "trainer", feature = "linker")),
    allow(dead_code, unused_imports)
)]

#[cfg(all(
    target_arch = "wasm32",
    any(
        all(feature = "miner", feature = "trainer"),
        all(feature = "miner", feature = "linker"),
        all(feature = "trainer", feature = "linker"),
    )
))]
compile_error!(
    "a wasm plugin implements exactly one role: enable only one of the features `miner`, `trainer`, `linker`"
);

#[cfg(all(
    target_arch = "wasm32",
    not(any(feature = "miner", feature = "trainer", feature = "linker"))
))]
compile_error!("enable the feature of the plugin's role: `miner`, `trainer` or `linker`");

mod context;
#[cfg(feature = "linker")]
mod linker;
#[cfg(feature = "miner")]
mod miner;
#[cfg(feature = "trainer")]
mod trainer;

#[cfg(not(target_arch = "wasm32"))]
pub mod backend;

#[doc(hidden)]
pub mod __private;
pub mod rng;

pub use concepts_plugin_api::{ApiVersion, LogLevel, Role, API_VERSION};
pub use context::Context;

#[cfg(feature = "miner")]
pub use concepts_plugin_api::{MinedNegative, MiningParams, NegativeRole, ScoredRow};
#[cfg(feature = "miner")]
pub use miner::{Matrix, MiningJob, NegativeMiner};

#[cfg(feature = "trainer")]
pub use concepts_plugin_api::{
    EpochReport, Recognition, SampleCounts, SampleKind, SampleRef, Split, TrainParams, TrainSummary,
};
#[cfg(feature = "trainer")]
pub use trainer::{Batch, Snapshot, Trainer, TrainingJob};

#[cfg(feature = "linker")]
pub use concepts_plugin_api::{ConceptMetadata, Relation, Turn};
#[cfg(feature = "linker")]
pub use linker::MetadataLinker;

/// The result of a plugin method: errors are messages for the user.
pub type Result<T, E = String> = core::result::Result<T, E>;

/// Registers `T` as this crate's negative miner (`T: NegativeMiner`). Call it once, at the crate
/// root.
#[cfg(feature = "miner")]
#[macro_export]
macro_rules! register_miner {
    ($miner:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __ConceptsPluginComponent = $crate::__private::wasm::MinerComponent<$miner>;
            $crate::__private::wasm::bindings::__concepts_export_world!(
                __ConceptsPluginComponent with_types_in $crate::__private::wasm::bindings
            );
        };
        $crate::__native_exports!($crate::__private::native::dispatch_miner::<$miner>);
    };
}

/// Registers `T` as this crate's trainer (`T: Trainer`). Call it once, at the crate root.
#[cfg(feature = "trainer")]
#[macro_export]
macro_rules! register_trainer {
    ($trainer:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __ConceptsPluginComponent = $crate::__private::wasm::TrainerComponent<$trainer>;
            $crate::__private::wasm::bindings::__concepts_export_world!(
                __ConceptsPluginComponent with_types_in $crate::__private::wasm::bindings
            );
        };
        $crate::__native_exports!($crate::__private::native::dispatch_trainer::<$trainer>);
    };
}

/// Registers `T` as this crate's metadata linker (`T: MetadataLinker`). Call it once, at the crate
/// root.
#[cfg(feature = "linker")]
#[macro_export]
macro_rules! register_linker {
    ($linker:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __ConceptsPluginComponent = $crate::__private::wasm::LinkerComponent<$linker>;
            $crate::__private::wasm::bindings::__concepts_export_world!(
                __ConceptsPluginComponent with_types_in $crate::__private::wasm::bindings
            );
        };
        $crate::__native_exports!($crate::__private::native::dispatch_linker::<$linker>);
    };
}

/// Emits the three C ABI symbols of a native plugin that dispatches with `$dispatch`; empty unless
/// the SDK feature `native` is on (the symbols have fixed names, so only the library being built as a
/// native plugin may define them).
#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
#[doc(hidden)]
#[macro_export]
macro_rules! __native_exports {
    ($dispatch:expr) => {
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            #[no_mangle]
            pub extern "C" fn concepts_plugin_abi_version() -> u32 {
                $crate::__private::native::ABI_VERSION
            }

            /// # Safety
            ///
            /// See `concepts_plugin_api::native::CallFn`.
            #[no_mangle]
            pub unsafe extern "C" fn concepts_plugin_call(
                host: *const $crate::__private::native::NativeHostTable,
                method: *const u8,
                method_len: usize,
                input: *const u8,
                input_len: usize,
                output: *mut $crate::__private::native::NativeBuffer,
            ) -> i32 {
                // SAFETY: forwarded under the same contract.
                unsafe {
                    $crate::__private::native::call(
                        $dispatch, host, method, method_len, input, input_len, output,
                    )
                }
            }

            /// # Safety
            ///
            /// `buffer` must come from `concepts_plugin_call` and not have been freed.
            #[no_mangle]
            pub unsafe extern "C" fn concepts_plugin_free(
                buffer: $crate::__private::native::NativeBuffer,
            ) {
                // SAFETY: forwarded under the same contract.
                unsafe { $crate::__private::native::free(buffer) }
            }
        };
    };
}

/// Without the SDK feature `native` (or on wasm), a plugin library exports no C symbols.
#[cfg(not(all(feature = "native", not(target_arch = "wasm32"))))]
#[doc(hidden)]
#[macro_export]
macro_rules! __native_exports {
    ($dispatch:expr) => {};
}
