//! Non-blocking socket calls. monoio tells us when a socket is ready; the bytes then move with
//! direct `recv`/`sendmsg` calls, so idle connections own no buffer and a connection's queued
//! frames leave in one gather-send.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use bytes::{Buf, Bytes};

/// Outcome of a read attempt.
pub enum Recv {
    /// `n` bytes were read.
    Data(usize),
    /// Nothing to read now.
    WouldBlock,
    /// The peer closed, or the socket failed.
    Closed,
}

/// Reads what is available into `buf` without blocking.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> Recv {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` writable bytes for the duration of the call.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            return Recv::Data(n as usize);
        }
        if n == 0 {
            return Recv::Closed;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Recv::WouldBlock,
            _ => return Recv::Closed,
        }
    }
}

/// Outcome of a flush.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued was sent.
    Done,
    /// The socket buffer is full; wait for writability.
    Blocked,
    /// The socket failed; the connection must go.
    Failed,
}

/// Most buffers gathered into one `sendmsg`.
const MAX_IOV: usize = 64;

/// Sends queued frames without blocking, gathering up to 64 of them per call. Sent bytes leave
/// the queue (a partly sent frame is advanced in place); `queued` is kept in step.
pub fn flush(fd: RawFd, out: &mut VecDeque<Bytes>, queued: &mut usize) -> Flush {
    while !out.is_empty() {
        let mut iov: [libc::iovec; MAX_IOV] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOV];
        let mut count = 0;
        for b in out.iter().take(MAX_IOV) {
            iov[count] = libc::iovec {
                iov_base: b.as_ptr() as *mut _,
                iov_len: b.len(),
            };
            count += 1;
        }
        // SAFETY: msghdr is zero-initialisable; the iovecs point into `out`, which is not touched
        // until the call returns.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = count as _;
        // SAFETY: `msg` describes valid readable memory.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Flush::Blocked,
                _ => return Flush::Failed,
            }
        }
        let mut sent = n as usize;
        *queued -= sent;
        while sent > 0 {
            let Some(front) = out.front_mut() else { break };
            if front.len() <= sent {
                sent -= front.len();
                out.pop_front();
            } else {
                front.advance(sent);
                sent = 0;
            }
        }
    }
    Flush::Done
}

/// Sends all of `data`, returning how much went out before the socket would block.
pub fn send_some(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `data` is valid for reads of its length.
        let n = unsafe {
            libc::send(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// Half- or fully closes a socket; a pending readiness wait then wakes with end-of-file.
pub fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutting down a socket we own has no memory-safety requirements.
    unsafe {
        libc::shutdown(fd, how);
    }
}
