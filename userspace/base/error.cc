#include "userspace/base/error.hh"

#include <cerrno>
#include <cstring>

namespace ferry {

Error& Error::context(std::string_view what) & {
  message_ = fmt::format("{}: {}", what, message_);
  return *this;
}

Error&& Error::context(std::string_view what) && {
  message_ = fmt::format("{}: {}", what, message_);
  return std::move(*this);
}

std::string Error::what() const {
  if (errno_ == 0) return message_;
  return fmt::format("{}: {} (errno {})", message_, std::strerror(errno_), errno_);
}

Error sys_error(std::string_view what) { return sys_error(what, errno); }

Error sys_error(std::string_view what, int err) {
  return Error(fmt::format("{} failed", what), err);
}

}  // namespace ferry
