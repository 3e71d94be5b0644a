#pragma once
// Ferry's error value: what failed, with the context a reader needs to act,
// and the errno behind it when a system call is the cause. Every fallible
// function returns Result<T> (std::expected) instead of throwing, so failure
// paths are visible in signatures and testable.
#include <expected>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace ferry {

class Error {
 public:
  Error() = default;
  explicit Error(std::string message, int sys_errno = 0)
      : message_(std::move(message)), errno_(sys_errno) {}

  // "context: message". Used while an error travels up the stack so the
  // final text reads like a path from the operation to the root cause.
  Error& context(std::string_view what) &;
  Error&& context(std::string_view what) &&;

  const std::string& message() const { return message_; }
  int sys_errno() const { return errno_; }
  std::string what() const;  // message plus strerror when errno is set

 private:
  std::string message_;
  int errno_ = 0;
};

template <class T>
using Result = std::expected<T, Error>;
using Status = std::expected<void, Error>;

// An Error from the current errno: sys_error("KVM_CREATE_VM"). When the
// message needs formatting, save errno FIRST (formatting allocates, and the
// allocator may change errno): `const int e = errno; sys_error(fmt::format(...), e)`.
Error sys_error(std::string_view what);
Error sys_error(std::string_view what, int err);

inline std::unexpected<Error> fail(std::string message) {
  return std::unexpected(Error(std::move(message)));
}
template <class... Args>
std::unexpected<Error> fail(fmt::format_string<Args...> f, Args&&... args) {
  return std::unexpected(Error(fmt::format(f, std::forward<Args>(args)...)));
}
inline std::unexpected<Error> fail_sys(std::string_view what) {
  return std::unexpected(sys_error(what));
}

}  // namespace ferry

template <>
struct fmt::formatter<ferry::Error> : fmt::formatter<std::string> {
  auto format(const ferry::Error& e, fmt::format_context& ctx) const {
    return fmt::formatter<std::string>::format(e.what(), ctx);
  }
};
