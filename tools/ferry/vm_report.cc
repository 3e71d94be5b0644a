#include "tools/ferry/vm_report.hh"

#include <cctype>
#include <charconv>

#include <fmt/format.h>

namespace ferry::cli {
using nlohmann::json;

std::string status_text(const json& s) {
  if (s.contains("incoming")) {  // `ferry receive` before its VM runs
    const auto& in = s["incoming"];
    return fmt::format("VM incoming: the migration is {}, session {} from {}\n", in.value("phase", "?"),
                       in.value("session", "?"), in.value("source", "").empty() ? "(not yet)" : in.value("source", ""));
  }
  const auto huge = s["huge_pages"].get<std::string>();
  std::string out = fmt::format("VM {}: {} vCPUs, {} MiB{}, {}, up {:.1f} s\n", s["state"].get<std::string>(),
                                s["vcpus"].get<int>(), s["memory_bytes"].get<std::uint64_t>() >> 20,
                                huge == "off" ? "" : fmt::format(" ({} huge pages)", huge),
                                s["irqchip"].get<bool>() ? "in-kernel irqchip + PIT" : "no irqchip",
                                s["uptime_s"].get<double>());
  if (!s["stop_reason"].get<std::string>().empty())
    out += fmt::format("  stopped: {}\n", s["stop_reason"].get<std::string>());
  if (!s["restored_from"].get<std::string>().empty())
    out += fmt::format("  restored from {}\n", s["restored_from"].get<std::string>());
  if (s.value("kind", "") != "test-guest") {
    out += fmt::format("  guest: {}\n  {:<5} {:>12}\n", s["kind"].get<std::string>(), "vCPU", "exits");
    for (const auto& v : s["per_vcpu"])
      out += fmt::format("  {:<5} {:>12}\n", v["id"].get<int>(), v["exits"].get<std::uint64_t>());
    return out;
  }
  const auto& g = s["guest"];
  const double rate = g["rate_mib_s"].get<double>();
  out += fmt::format("  guest: {} workload, {} pages ({} MiB), {}, {}\n", g["workload"].get<std::string>(),
                     g["working_set_pages"].get<std::uint64_t>(), g["working_set_pages"].get<std::uint64_t>() / 256,
                     g["pattern"].get<std::string>(),
                     rate > 0 ? fmt::format("{:.1f} MiB/s", rate) : std::string("unpaced"));
  const auto& h = s["heartbeats"];
  out += fmt::format("  heartbeats: guest sent {}, this process received {} (last #{}), longest gap {:.1f} ms\n",
                     g["heartbeats"].get<std::uint64_t>(), h["received"].get<std::uint64_t>(),
                     h["last_sequence"].get<std::uint64_t>(), h["max_gap_ms"].get<double>());
  out += fmt::format("  {:<5} {:>12} {:>12} {:>12} {:>9}\n", "vCPU", "exits", "rewrites", "verified", "failures");
  for (const auto& v : s["per_vcpu"])
    out += fmt::format("  {:<5} {:>12} {:>12} {:>12} {:>9}\n", v["id"].get<int>(), v["exits"].get<std::uint64_t>(),
                       v["rewrites"].get<std::uint64_t>(), v["verified"].get<std::uint64_t>(),
                       v["failures"].get<std::uint64_t>());
  const auto& t = s["totals"];
  out += fmt::format("  self-verification: {} page rewrites checked, {}\n", t["verified"].get<std::uint64_t>(),
                     t["failures"].get<std::uint64_t>() == 0 ? "no failures"
                                                             : fmt::format("{} FAILURES", t["failures"].get<std::uint64_t>()));
  return out;
}

std::string snapshot_text(const json& f) {
  return fmt::format("snapshot {}: {:.1f} MiB file ({} of {} pages non-zero, {} KiB of CPU/device state), "
                     "vCPUs paused {:.1f} ms\n",
                     f["path"].get<std::string>(), f["file_bytes"].get<std::uint64_t>() / 1048576.0,
                     f["data_pages"].get<std::uint64_t>(), f["pages"].get<std::uint64_t>(),
                     f["state_bytes"].get<std::uint64_t>() / 1024, f["paused_ms"].get<double>());
}

Result<std::uint64_t> parse_size_mib_default(const std::string& text) {
  std::uint64_t v = 0;
  const auto* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc() || p == text.data()) return fail("'{}' is not a size (e.g. 64M, 1G)", text);
  std::string unit(p, end);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.ends_with("IB")) unit.resize(unit.size() - 2);
  else if (unit.ends_with("B") && unit.size() > 1) unit.pop_back();
  std::uint64_t mult;
  if (unit.empty() || unit == "M") mult = 1ull << 20;
  else if (unit == "K") mult = 1ull << 10;
  else if (unit == "G") mult = 1ull << 30;
  else return fail("'{}': unknown size unit '{}' (K, M, G)", text, std::string(p, end));
  if (v > (~0ull) / mult) return fail("'{}' is too large", text);
  return v * mult;
}

}  // namespace ferry::cli
