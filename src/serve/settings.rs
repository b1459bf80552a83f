//! hyper's connection settings, as [`Serve`](crate::Serve) passes them on: a curated set,
//! named as hyper names them. The drain needs hyper's timer and both protocols, so
//! `serve` keeps its builder; these are applied to it.

use std::time::Duration;

use hyper_util::server::conn::auto;

use super::NO_TIMEOUT_AFTER;
use crate::error::ConfigError;

/// HTTP/1 settings for [`Serve::http1`](crate::Serve::http1). Anything not set keeps
/// hyper's default. The header-read timeout is
/// [`Serve::header_read_timeout`](crate::Serve::header_read_timeout).
///
/// ```
/// let h1 = httpdown::Http1Settings::new().max_headers(64).max_buf_size(64 * 1024);
/// # let _ = h1;
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Http1Settings {
    keep_alive: Option<bool>,
    half_close: Option<bool>,
    max_headers: Option<usize>,
    max_buf_size: Option<usize>,
    title_case_headers: Option<bool>,
    preserve_header_case: Option<bool>,
    writev: Option<bool>,
}

impl Http1Settings {
    /// Nothing set: hyper's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether connections are kept alive between requests (default on).
    pub fn keep_alive(mut self, enabled: bool) -> Self {
        self.keep_alive = Some(enabled);
        self
    }

    /// Whether a client that half-closes its side still gets its response (default off).
    pub fn half_close(mut self, enabled: bool) -> Self {
        self.half_close = Some(enabled);
        self
    }

    /// The most header fields a request may have (hyper's default: 100); more get `431`.
    pub fn max_headers(mut self, max: usize) -> Self {
        self.max_headers = Some(max);
        self
    }

    /// The largest read buffer, which bounds the request head (at least 8192; hyper's
    /// default is about 400 KiB). A smaller value is a [`ConfigError::OutOfRange`].
    pub fn max_buf_size(mut self, max: usize) -> Self {
        self.max_buf_size = Some(max);
        self
    }

    /// Whether response header names are written in Title-Case.
    pub fn title_case_headers(mut self, enabled: bool) -> Self {
        self.title_case_headers = Some(enabled);
        self
    }

    /// Whether header names keep the case the request used.
    pub fn preserve_header_case(mut self, enabled: bool) -> Self {
        self.preserve_header_case = Some(enabled);
        self
    }

    /// Whether vectored writes are used (hyper decides by default).
    pub fn writev(mut self, enabled: bool) -> Self {
        self.writev = Some(enabled);
        self
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if let Some(max) = self.max_buf_size {
            if max < 8192 {
                return Err(ConfigError::OutOfRange {
                    setting: "http1 max_buf_size",
                    allowed: "at least 8192",
                });
            }
        }
        Ok(())
    }

    pub(crate) fn apply<E>(&self, builder: &mut auto::Builder<E>) {
        let mut h1 = builder.http1();
        if let Some(v) = self.keep_alive {
            h1.keep_alive(v);
        }
        if let Some(v) = self.half_close {
            h1.half_close(v);
        }
        if let Some(v) = self.max_headers {
            h1.max_headers(v);
        }
        if let Some(v) = self.max_buf_size {
            h1.max_buf_size(v);
        }
        if let Some(v) = self.title_case_headers {
            h1.title_case_headers(v);
        }
        if let Some(v) = self.preserve_header_case {
            h1.preserve_header_case(v);
        }
        if let Some(v) = self.writev {
            h1.writev(v);
        }
    }
}

/// HTTP/2 settings for [`Serve::http2`](crate::Serve::http2). Anything not set keeps
/// hyper's default, except extended CONNECT (RFC 8441, WebSockets over HTTP/2), which
/// `serve` enables as `axum::serve` does.
///
/// ```
/// use std::time::Duration;
///
/// let h2 = httpdown::Http2Settings::new()
///     .max_concurrent_streams(256)
///     .keep_alive_interval(Duration::from_secs(20))
///     .keep_alive_timeout(Duration::from_secs(10));
/// # let _ = h2;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Http2Settings {
    max_concurrent_streams: Option<Option<u32>>,
    initial_stream_window_size: Option<u32>,
    initial_connection_window_size: Option<u32>,
    adaptive_window: Option<bool>,
    max_frame_size: Option<u32>,
    max_header_list_size: Option<u32>,
    max_send_buf_size: Option<usize>,
    keep_alive_interval: Option<Duration>,
    keep_alive_timeout: Option<Duration>,
    max_pending_accept_reset_streams: Option<usize>,
    max_local_error_reset_streams: Option<usize>,
    enable_connect_protocol: bool,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            max_concurrent_streams: None,
            initial_stream_window_size: None,
            initial_connection_window_size: None,
            adaptive_window: None,
            max_frame_size: None,
            max_header_list_size: None,
            max_send_buf_size: None,
            keep_alive_interval: None,
            keep_alive_timeout: None,
            max_pending_accept_reset_streams: None,
            max_local_error_reset_streams: None,
            enable_connect_protocol: true,
        }
    }
}

/// HTTP/2's largest flow-control window (RFC 9113, 6.9.1).
const MAX_WINDOW_SIZE: u32 = (1 << 31) - 1;

impl Http2Settings {
    /// hyper's defaults, extended CONNECT on.
    pub fn new() -> Self {
        Self::default()
    }

    /// `SETTINGS_MAX_CONCURRENT_STREAMS` (hyper's default: 200); `None`: no limit.
    pub fn max_concurrent_streams(mut self, max: impl Into<Option<u32>>) -> Self {
        self.max_concurrent_streams = Some(max.into());
        self
    }

    /// `SETTINGS_INITIAL_WINDOW_SIZE`, the stream-level flow-control window (at most
    /// 2^31-1). Turns the adaptive window off.
    pub fn initial_stream_window_size(mut self, size: u32) -> Self {
        self.initial_stream_window_size = Some(size);
        self
    }

    /// The connection-level flow-control window (at most 2^31-1). Turns the adaptive
    /// window off.
    pub fn initial_connection_window_size(mut self, size: u32) -> Self {
        self.initial_connection_window_size = Some(size);
        self
    }

    /// Whether the flow-control windows adapt to the connection's bandwidth-delay
    /// product (overrides both window sizes).
    pub fn adaptive_window(mut self, enabled: bool) -> Self {
        self.adaptive_window = Some(enabled);
        self
    }

    /// `SETTINGS_MAX_FRAME_SIZE`: between 16,384 and 16,777,215.
    pub fn max_frame_size(mut self, size: u32) -> Self {
        self.max_frame_size = Some(size);
        self
    }

    /// `SETTINGS_MAX_HEADER_LIST_SIZE`: the largest header list a request may send.
    pub fn max_header_list_size(mut self, size: u32) -> Self {
        self.max_header_list_size = Some(size);
        self
    }

    /// The most bytes buffered per stream for sending (at most `u32::MAX`).
    pub fn max_send_buf_size(mut self, size: usize) -> Self {
        self.max_send_buf_size = Some(size);
        self
    }

    /// How often to send a keep-alive PING on an idle connection (off by default).
    pub fn keep_alive_interval(mut self, interval: Duration) -> Self {
        self.keep_alive_interval = Some(interval);
        self
    }

    /// How long to wait for a keep-alive PING's answer before closing the connection
    /// (hyper's default: 20 s). Used only with a keep-alive interval.
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.keep_alive_timeout = Some(timeout);
        self
    }

    /// How many streams a client may reset before they are accepted, against the
    /// "rapid reset" attack.
    pub fn max_pending_accept_reset_streams(mut self, max: usize) -> Self {
        self.max_pending_accept_reset_streams = Some(max);
        self
    }

    /// How many streams may end in a local error before the connection is closed.
    pub fn max_local_error_reset_streams(mut self, max: usize) -> Self {
        self.max_local_error_reset_streams = Some(max);
        self
    }

    /// Whether clients may use extended CONNECT (RFC 8441): WebSockets over HTTP/2. On by
    /// default, as in `axum::serve`.
    pub fn enable_connect_protocol(mut self, enabled: bool) -> Self {
        self.enable_connect_protocol = enabled;
        self
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        let window = "at most 2147483647 (2^31-1)";
        if self.initial_stream_window_size > Some(MAX_WINDOW_SIZE) {
            return Err(ConfigError::OutOfRange {
                setting: "http2 initial_stream_window_size",
                allowed: window,
            });
        }
        if self.initial_connection_window_size > Some(MAX_WINDOW_SIZE) {
            return Err(ConfigError::OutOfRange {
                setting: "http2 initial_connection_window_size",
                allowed: window,
            });
        }
        if let Some(size) = self.max_frame_size {
            if !(16_384..=16_777_215).contains(&size) {
                return Err(ConfigError::OutOfRange {
                    setting: "http2 max_frame_size",
                    allowed: "in 16384..=16777215",
                });
            }
        }
        if let Some(size) = self.max_send_buf_size {
            if u32::try_from(size).is_err() {
                return Err(ConfigError::OutOfRange {
                    setting: "http2 max_send_buf_size",
                    allowed: "at most 4294967295",
                });
            }
        }
        Ok(())
    }

    pub(crate) fn apply<E>(&self, builder: &mut auto::Builder<E>) {
        let mut h2 = builder.http2();
        if let Some(v) = self.max_concurrent_streams {
            h2.max_concurrent_streams(v);
        }
        if let Some(v) = self.initial_stream_window_size {
            h2.initial_stream_window_size(v);
        }
        if let Some(v) = self.initial_connection_window_size {
            h2.initial_connection_window_size(v);
        }
        if let Some(v) = self.adaptive_window {
            h2.adaptive_window(v);
        }
        if let Some(v) = self.max_frame_size {
            h2.max_frame_size(v);
        }
        if let Some(v) = self.max_header_list_size {
            h2.max_header_list_size(v);
        }
        if let Some(v) = self.max_send_buf_size {
            h2.max_send_buf_size(v);
        }
        // hyper adds these to the clock: one too long for it means never.
        if let Some(v) = ping_interval(self.keep_alive_interval) {
            h2.keep_alive_interval(v);
        }
        if let Some(v) = self.keep_alive_timeout {
            h2.keep_alive_timeout(v.min(NO_TIMEOUT_AFTER));
        }
        if let Some(v) = self.max_pending_accept_reset_streams {
            h2.max_pending_accept_reset_streams(v);
        }
        if let Some(v) = self.max_local_error_reset_streams {
            h2.max_local_error_reset_streams(v);
        }
        if self.enable_connect_protocol {
            h2.enable_connect_protocol();
        }
    }
}

/// The keep-alive ping interval hyper gets: none for one it would overflow its clock with
/// (a century or more means never).
fn ping_interval(interval: Option<Duration>) -> Option<Duration> {
    interval.filter(|v| *v < NO_TIMEOUT_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_setting_is_kept_for_hyper() {
        let h1 = Http1Settings::new()
            .keep_alive(false)
            .half_close(true)
            .max_headers(7)
            .max_buf_size(9_000)
            .title_case_headers(true)
            .preserve_header_case(true)
            .writev(false);
        assert_eq!(
            (
                h1.keep_alive,
                h1.half_close,
                h1.max_headers,
                h1.max_buf_size
            ),
            (Some(false), Some(true), Some(7), Some(9_000))
        );
        assert_eq!(
            (h1.title_case_headers, h1.preserve_header_case, h1.writev),
            (Some(true), Some(true), Some(false))
        );
        let h2 = Http2Settings::new()
            .adaptive_window(true)
            .max_header_list_size(1_024)
            .keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3))
            .max_pending_accept_reset_streams(11)
            .max_local_error_reset_streams(13);
        assert_eq!(
            (h2.adaptive_window, h2.max_header_list_size),
            (Some(true), Some(1_024))
        );
        assert_eq!(
            (h2.keep_alive_interval, h2.keep_alive_timeout),
            (Some(Duration::from_secs(5)), Some(Duration::from_secs(3)))
        );
        assert_eq!(
            (
                h2.max_pending_accept_reset_streams,
                h2.max_local_error_reset_streams
            ),
            (Some(11), Some(13))
        );
        assert_eq!(
            ping_interval(Some(Duration::from_secs(5))),
            Some(Duration::from_secs(5))
        );
        assert_eq!(ping_interval(Some(NO_TIMEOUT_AFTER)), None);
        assert_eq!(ping_interval(Some(Duration::MAX)), None);
        assert_eq!(ping_interval(None), None);
        // The largest window is 2^31-1 exactly.
        assert!(Http2Settings::new()
            .initial_connection_window_size(2_147_483_647)
            .check()
            .is_ok());
        assert!(Http2Settings::new()
            .initial_stream_window_size(2_147_483_648)
            .check()
            .is_err());
        assert!(Http2Settings::new()
            .initial_connection_window_size(2_147_483_648)
            .check()
            .is_err());
    }

    #[test]
    fn values_hyper_would_panic_on_are_configuration_errors() {
        assert!(Http1Settings::new().max_buf_size(8192).check().is_ok());
        assert!(matches!(
            Http1Settings::new().max_buf_size(8191).check(),
            Err(ConfigError::OutOfRange {
                setting: "http1 max_buf_size",
                ..
            })
        ));
        assert!(Http2Settings::new().max_frame_size(16_384).check().is_ok());
        assert!(Http2Settings::new()
            .max_frame_size(16_777_215)
            .check()
            .is_ok());
        for size in [0, 16_383, 16_777_216, u32::MAX] {
            assert!(
                Http2Settings::new().max_frame_size(size).check().is_err(),
                "{size}"
            );
        }
        assert!(Http2Settings::new()
            .initial_stream_window_size(MAX_WINDOW_SIZE)
            .check()
            .is_ok());
        assert!(Http2Settings::new()
            .initial_stream_window_size(u32::MAX)
            .check()
            .is_err());
        assert!(Http2Settings::new()
            .initial_connection_window_size(u32::MAX)
            .check()
            .is_err());
        #[cfg(target_pointer_width = "64")]
        assert!(Http2Settings::new()
            .max_send_buf_size(usize::MAX)
            .check()
            .is_err());
        let error = Http2Settings::new().max_frame_size(1).check().unwrap_err();
        assert_eq!(
            error.to_string(),
            "http2 max_frame_size must be in 16384..=16777215"
        );
    }
}
