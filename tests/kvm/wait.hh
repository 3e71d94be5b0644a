#pragma once
// Polling with a deadline, for KVM tests that watch a running guest: a
// guest that stops making progress fails the test instead of hanging it.
#include <chrono>
#include <functional>
#include <thread>

namespace ferry::test {

inline bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return pred();
}

}  // namespace ferry::test
