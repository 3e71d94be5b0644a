#pragma once
// Socket settings shared by the TCP helpers, the Sender and the Receiver
// (implemented in tcp.cc). Internal to ferry::transport.
#include "userspace/base/error.hh"

namespace ferry::transport {

// Clears O_NONBLOCK. io_uring honours O_NONBLOCK by failing a send or recv
// with EAGAIN instead of waiting for the socket, so the data path needs
// blocking sockets.
Status set_blocking(int fd);

// TCP_NODELAY (frames are flushed by the Sender, not by Nagle), a 30 s
// TCP_USER_TIMEOUT (a silent peer fails sends instead of blocking them for
// many minutes) and larger socket buffers where the kernel lets us (tcp.cc).
Status tune_tcp_socket(int fd);

}  // namespace ferry::transport
