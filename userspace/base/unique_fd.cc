#include "userspace/base/unique_fd.hh"

#include <unistd.h>

namespace ferry {

void UniqueFd::reset(int fd) {
  // close() errors on a descriptor we own are not actionable (the fd is gone
  // either way), so they are deliberately ignored here.
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

}  // namespace ferry
