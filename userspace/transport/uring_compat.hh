#pragma once
// Kernel ABI that Debian's liburing 2.3 headers predate. Values are from the
// kernel's include/uapi/linux/io_uring.h (Linux 6.2); newer liburing defines
// them itself, so each is guarded.
#include <liburing.h>

// sqe->ioprio flag for IORING_OP_SEND_ZC / SENDMSG_ZC: ask the kernel to say
// in the notification CQE whether it really sent from our pages or copied.
// Kernels before 6.2 fail the request with -EINVAL.
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif

// Set in the notification CQE's res when the kernel fell back to copying
// (always the case on loopback and veth), making zero-copy pure overhead.
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif
