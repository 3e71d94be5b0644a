#pragma once
// The bandwidth cap of a migration: one token bucket its streams share.
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>

namespace ferry::transport {

// A token bucket shared by every stream of a migration: the bandwidth cap.
// Thread-safe. A rate of 0 means unlimited. The bucket holds at most
// `burst` bytes (default: 50 ms worth of the rate, at least 256 KiB) so an
// idle stream cannot save up a large burst.
class RateLimiter {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;
  using Sleep = std::function<void(std::chrono::nanoseconds)>;
  // clock/sleep are injectable for unit tests; defaults are steady_clock and
  // std::this_thread::sleep_for.
  explicit RateLimiter(double bytes_per_second, Clock clock = {}, Sleep sleep = {});
  // Blocks until `bytes` may go out (a request larger than the burst is
  // allowed and leaves the bucket in debt). Returns at once when unlimited.
  void acquire(std::uint64_t bytes);
  void set_rate(double bytes_per_second);
  double rate() const;

 private:
  mutable std::mutex mu_;
  double rate_ = 0;
  double tokens_ = 0;
  std::chrono::steady_clock::time_point last_{};
  Clock clock_;
  Sleep sleep_;
};

}  // namespace ferry::transport
