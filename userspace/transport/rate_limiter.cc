// The bandwidth cap: a token bucket shared by a migration's streams.
#include <algorithm>
#include <thread>

#include "userspace/transport/rate_limiter.hh"

namespace ferry::transport {
namespace {

constexpr double kMinBurst = 256.0 * 1024;
constexpr double kBurstSeconds = 0.05;

double burst_for(double rate) { return std::max(rate * kBurstSeconds, kMinBurst); }

}  // namespace

RateLimiter::RateLimiter(double bytes_per_second, Clock clock, Sleep sleep)
    : rate_(std::max(0.0, bytes_per_second)),
      clock_(clock ? std::move(clock) : Clock([] { return std::chrono::steady_clock::now(); })),
      sleep_(sleep ? std::move(sleep) : Sleep([](std::chrono::nanoseconds d) { std::this_thread::sleep_for(d); })) {
  // Start with a full bucket: the first burst goes out at once.
  tokens_ = burst_for(rate_);
  last_ = clock_();
}

void RateLimiter::acquire(std::uint64_t bytes) {
  std::chrono::nanoseconds wait{0};
  {
    std::lock_guard lock(mu_);
    if (rate_ <= 0) return;
    const auto now = clock_();
    const double elapsed = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    tokens_ = std::min(burst_for(rate_), tokens_ + std::max(0.0, elapsed) * rate_);
    // Take the tokens now and sleep off any debt outside the lock: callers
    // that come later queue up behind this debt, so streams sharing the
    // bucket are served in arrival order and the total stays at the rate.
    tokens_ -= static_cast<double>(bytes);
    if (tokens_ < 0) {
      wait = std::chrono::nanoseconds(static_cast<std::int64_t>(-tokens_ / rate_ * 1e9));
    }
  }
  if (wait.count() > 0) sleep_(wait);
}

void RateLimiter::set_rate(double bytes_per_second) {
  std::lock_guard lock(mu_);
  const auto now = clock_();
  const double new_rate = std::max(0.0, bytes_per_second);
  if (rate_ <= 0) {
    // Nothing was tracked while unlimited: start again from a full bucket.
    tokens_ = burst_for(new_rate);
  } else {
    // Credit the time so far at the old rate before switching.
    const double elapsed = std::chrono::duration<double>(now - last_).count();
    tokens_ = std::min(burst_for(rate_), tokens_ + std::max(0.0, elapsed) * rate_);
    tokens_ = std::min(tokens_, burst_for(new_rate));
  }
  last_ = now;
  rate_ = new_rate;
}

double RateLimiter::rate() const {
  std::lock_guard lock(mu_);
  return rate_;
}

}  // namespace ferry::transport
