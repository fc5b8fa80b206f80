//! Non-blocking socket calls. monoio tells us when a socket is ready; the bytes then move with
//! direct `recv`/`sendmsg` calls, so idle connections own no buffer and a connection's queued
//! frames leave in one gather-send.

use std::io;
use std::os::fd::RawFd;

use super::outbound::OutQueue;

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

/// Sends queued frames without blocking, gathering up to 64 of them per call. What the kernel
/// takes leaves the queue (a partly sent frame is advanced in place, and the queue's byte count
/// follows).
pub fn flush(fd: RawFd, out: &mut OutQueue) -> Flush {
    while !out.is_empty() {
        let mut iov: [libc::iovec; MAX_IOV] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOV];
        let mut count = 0;
        for b in out.frames().take(MAX_IOV) {
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
        out.consume(n as usize);
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

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use bytes::Bytes;

    use super::*;

    #[test]
    fn flush_sends_the_queue_in_order_and_keeps_the_count_when_the_socket_fills() {
        let (a, mut b) = UnixStream::pair().expect("socket pair");
        let mut q = OutQueue::default();
        let mut sent = Vec::new();
        // More frames than one gather-send takes, more bytes than the socket buffers hold.
        for i in 0..200u32 {
            let frame: Vec<u8> = (0..10_000u32).map(|j| (i + j) as u8).collect();
            sent.extend_from_slice(&frame);
            q.push(Bytes::from(frame));
        }
        let mut received = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let before = q.bytes();
            let outcome = flush(a.as_raw_fd(), &mut q);
            let queued: usize = q.frames().map(<[u8]>::len).sum();
            assert_eq!(q.bytes(), queued, "the count follows what is left");
            assert_eq!(before - q.bytes(), sent.len() - received.len() - q.bytes());
            if outcome == Flush::Done {
                assert!(q.is_empty());
                break;
            }
            assert_eq!(outcome, Flush::Blocked);
            // Drain what the peer got, so the next flush can go on.
            let mut waiting = sent.len() - received.len() - q.bytes();
            while waiting > 0 {
                let n = b.read(&mut buf).expect("read");
                received.extend_from_slice(&buf[..n]);
                waiting -= n;
            }
        }
        drop(a);
        b.read_to_end(&mut received).expect("read the rest");
        assert!(received == sent, "bytes arrive whole and in order");
    }

    #[test]
    fn flush_reports_a_failed_socket() {
        let (a, b) = UnixStream::pair().expect("socket pair");
        drop(b);
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"frame"));
        assert_eq!(flush(a.as_raw_fd(), &mut q), Flush::Failed);
        assert_eq!(q.bytes(), 5, "nothing was taken");
    }
}
