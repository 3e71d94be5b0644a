// Reading the report JSON and formatting its figures for the HTML page, and
// the rounds table.
#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "userspace/migration/report_html.hh"
#include "userspace/migration/report_html_parts.hh"

namespace ferry::migration::html {
namespace {

constexpr double kPageBytes = 4096;  // dirty_after counts pages

const json& null_json() {
  static const json n;
  return n;
}

std::string throttle_cell(const std::vector<double>& throttle) {
  if (std::none_of(throttle.begin(), throttle.end(), [](double t) { return t > 0; })) return "&ndash;";
  std::string out;
  for (std::size_t i = 0; i < throttle.size(); ++i)
    out += fmt::format("{}vCPU&nbsp;{}&nbsp;{:.0f}%", i ? "<br>" : "", i, std::clamp(throttle[i], 0.0, 1.0) * 100);
  return out;
}

}  // namespace

const json& member(const json& j, std::string_view key) {
  if (!j.is_object()) return null_json();
  auto it = j.find(key);
  return it == j.end() ? null_json() : *it;
}

double number(const json& j, std::string_view key, double otherwise) {
  const auto& v = member(j, key);
  if (!v.is_number()) return otherwise;
  const double d = v.get<double>();
  return std::isfinite(d) ? d : otherwise;
}

std::string text(const json& j, std::string_view key) {
  const auto& v = member(j, key);
  return v.is_string() ? v.get<std::string>() : std::string();
}

std::vector<Round> read_rounds(const json& report) {
  std::vector<Round> out;
  const auto& rounds = member(report, "rounds");
  if (!rounds.is_array()) return out;
  for (const auto& r : rounds) {
    Round f;
    f.round = number(r, "round", static_cast<double>(out.size()));
    f.ms = number(r, "ms");
    f.pages = number(r, "pages");
    f.zero_pages = number(r, "zero_pages");
    f.bytes = std::max(0.0, number(r, "bytes"));
    f.dirty_after_pages = std::max(0.0, number(r, "dirty_after"));
    f.dirty_after_bytes = f.dirty_after_pages * kPageBytes;
    f.dirty_rate = std::max(0.0, number(r, "dirty_rate_bytes_per_s"));
    f.bandwidth = std::max(0.0, number(r, "bandwidth_bytes_per_s"));
    f.expected_downtime_ms = number(r, "expected_downtime_ms");
    f.decision = text(r, "decision");
    f.reason = text(r, "reason");
    if (const auto& t = member(r, "throttle"); t.is_array())
      for (const auto& v : t) f.throttle.push_back(v.is_number() ? v.get<double>() : 0);
    out.push_back(std::move(f));
  }
  return out;
}

std::ptrdiff_t decision_round(const std::vector<Round>& rounds) {
  for (std::size_t i = 0; i < rounds.size(); ++i)
    if (rounds[i].decision == "switchover" || rounds[i].decision == "cancel") return static_cast<std::ptrdiff_t>(i);
  return -1;
}

std::string fmt_ms(double ms) { return ms < 0 ? std::string("unknown") : fmt::format("{:.1f}&nbsp;ms", ms); }

std::string fmt_duration(double ms) {
  if (ms < 0) return "unknown";
  return ms < 10000 ? fmt_ms(ms) : fmt::format("{:.1f}&nbsp;s", ms / 1000);
}

Unit binary_unit(double max) {
  if (max >= 1024.0 * 1024 * 1024) return {1024.0 * 1024 * 1024, "GiB"};
  if (max >= 1024.0 * 1024) return {1024.0 * 1024, "MiB"};
  return {1024.0, "KiB"};
}

std::string fmt_bytes(double bytes) {
  if (bytes < 1024) return fmt::format("{:.0f}&nbsp;B", std::max(0.0, bytes));
  const auto u = binary_unit(bytes);
  return fmt::format("{:.1f}&nbsp;{}", bytes / u.divisor, u.name);
}

std::string fmt_count(double n) {
  // Built forwards rather than with string::insert, which g++ 12 at -O2
  // flags with a false -Wrestrict.
  const std::string digits = fmt::format("{:.0f}", std::max(0.0, n));
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string fmt_num(double v) {
  // Rounded first, so a tick at 0.1 + 0.2 reads 0.3.
  return fmt::format("{:g}", std::round(v * 1000) / 1000);
}

std::string_view decision_class(std::string_view d) {
  for (std::string_view known : {"continue", "switchover", "cancel", "final"})
    if (d == known) return known;
  return "other";
}

std::string_view phase_class(std::string_view p) {
  for (std::string_view known : {"migrated", "failed", "cancelled", "outcome-unknown"})
    if (p == known) return known;
  return "other";
}

std::string rounds_table(const std::vector<Round>& rounds) {
  if (rounds.empty()) return "<p class=\"empty\">No rounds: the migration ended before pre-copy started.</p>\n";
  std::string out =
      "<div class=\"scroll\"><table class=\"rounds\">\n<thead><tr>"
      "<th class=\"num\">Round</th><th class=\"num\">Time<br><span class=\"u\">ms</span></th>"
      "<th class=\"num\">Pages</th><th class=\"num\">Zero<br>pages</th>"
      "<th class=\"num\">Sent<br><span class=\"u\">MiB</span></th>"
      "<th class=\"num\">Dirty after<br><span class=\"u\">pages</span></th>"
      "<th class=\"num\">Dirty rate<br><span class=\"u\">MiB/s</span></th>"
      "<th class=\"num\">Bandwidth<br><span class=\"u\">MiB/s</span></th>"
      "<th class=\"num\">Expected<br>downtime <span class=\"u\">ms</span></th>"
      "<th class=\"num\">Throttle</th><th>Decision</th><th class=\"reason\">Reason</th></tr></thead>\n<tbody>\n";
  constexpr double kMiB = 1024.0 * 1024;
  for (const auto& r : rounds) {
    out += fmt::format(
        "<tr><td class=\"num\">{:.0f}</td><td class=\"num\">{:.1f}</td><td class=\"num\">{}</td>"
        "<td class=\"num\">{}</td><td class=\"num\">{:.2f}</td><td class=\"num\">{}</td>"
        "<td class=\"num\">{:.2f}</td><td class=\"num\">{:.2f}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>"
        "<td><span class=\"pill {}\">{}</span></td><td class=\"reason\">{}</td></tr>\n",
        r.round, r.ms, fmt_count(r.pages), fmt_count(r.zero_pages), r.bytes / kMiB, fmt_count(r.dirty_after_pages),
        r.dirty_rate / kMiB, r.bandwidth / kMiB,
        r.expected_downtime_ms > 0 ? fmt::format("{:.1f}", r.expected_downtime_ms) : std::string("&ndash;"),
        throttle_cell(r.throttle), decision_class(r.decision),
        r.decision.empty() ? std::string("&ndash;") : html_escape(r.decision), html_escape(r.reason));
  }
  return out + "</tbody></table></div>\n";
}

}  // namespace ferry::migration::html
