//! Services every plugin has: logging and progress.

use concepts_plugin_api::LogLevel;

/// The host services every plugin may use, whatever its role.
///
/// Log records go to the host's log, tagged with the plugin id; progress goes to the host's progress
/// display.
pub struct Context<'a> {
    #[cfg(not(target_arch = "wasm32"))]
    host: &'a dyn crate::backend::HostBackend,
    #[cfg(target_arch = "wasm32")]
    _host: core::marker::PhantomData<&'a ()>,
}

impl<'a> Context<'a> {
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn new(host: &'a dyn crate::backend::HostBackend) -> Context<'a> {
        Context { host }
    }

    #[cfg(target_arch = "wasm32")]
    pub(crate) fn new() -> Context<'a> {
        Context {
            _host: core::marker::PhantomData,
        }
    }

    /// Records `message` at `level`.
    pub fn log(&self, level: LogLevel, message: &str) {
        #[cfg(not(target_arch = "wasm32"))]
        self.host.log(level, message);
        #[cfg(target_arch = "wasm32")]
        crate::__private::wasm::log(level, message);
    }

    /// Records `message` at level `debug`.
    pub fn debug(&self, message: &str) {
        self.log(LogLevel::Debug, message);
    }

    /// Records `message` at level `info`.
    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message);
    }

    /// Records `message` at level `warn`.
    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message);
    }

    /// Reports that `done` of `total` units of the current call are done.
    pub fn progress(&self, done: u64, total: u64, message: &str) {
        #[cfg(not(target_arch = "wasm32"))]
        self.host.progress(done, total, message);
        #[cfg(target_arch = "wasm32")]
        crate::__private::wasm::progress(done, total, message);
    }
}
