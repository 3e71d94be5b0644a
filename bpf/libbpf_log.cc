#include "bpf/libbpf_log.hh"

#include <bpf/libbpf.h>
#include <spdlog/spdlog.h>

#include <cstdarg>
#include <cstdio>
#include <mutex>
#include <string>
#include <string_view>

namespace ferry::bpf {
namespace {

// libbpf's INFO is chatty (one line per map/program) and its DEBUG is very
// verbose, so both are shifted one level down relative to spdlog's names.
spdlog::level::level_enum to_spdlog(libbpf_print_level level) {
  switch (level) {
    case LIBBPF_WARN: return spdlog::level::warn;
    case LIBBPF_INFO: return spdlog::level::debug;
    case LIBBPF_DEBUG: return spdlog::level::trace;
  }
  return spdlog::level::debug;
}

int print_to_spdlog(libbpf_print_level level, const char* format, va_list args) {
  auto lvl = to_spdlog(level);
  if (!spdlog::should_log(lvl)) return 0;
  va_list again;
  va_copy(again, args);
  char small[512];
  int n = std::vsnprintf(small, sizeof small, format, args);
  std::string big;
  std::string_view text;
  if (n >= 0 && static_cast<size_t>(n) < sizeof small) {
    text = std::string_view(small, static_cast<size_t>(n));
  } else if (n >= 0) {
    // The verifier log arrives as one long message whose last lines hold
    // the reason for the rejection, so it must never be truncated.
    big.resize(static_cast<size_t>(n));
    std::vsnprintf(big.data(), big.size() + 1, format, again);
    text = big;
  }
  va_end(again);
  if (n < 0) return n;
  while (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  spdlog::log(lvl, "{}", text);  // libbpf prefixes "libbpf: " itself
  return n;
}

}  // namespace

void install_libbpf_logging() {
  static std::once_flag once;
  std::call_once(once, [] { libbpf_set_print(print_to_spdlog); });
}

}  // namespace ferry::bpf
