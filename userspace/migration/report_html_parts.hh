#pragma once
// The pieces of the HTML report (report_html.hh), shared by its files:
// report_html.cc assembles the page, report_html_parts.cc reads the JSON and
// formats figures and the rounds table, report_html_svg.cc draws the charts,
// report_html_style.cc holds the CSS.
// Internal: nothing outside these files should include it.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace ferry::migration::html {

using json = nlohmann::json;

// Tolerant readers. A saved or hand-edited report may lack a field, hold
// null (the report's "unknown") or the wrong type: all read as `otherwise`.
double number(const json& j, std::string_view key, double otherwise = 0);
std::string text(const json& j, std::string_view key);
const json& member(const json& j, std::string_view key);  // null when absent

// One round as the page uses it (sizes in bytes, rates in bytes/s).
struct Round {
  double round = 0, ms = 0, pages = 0, zero_pages = 0, bytes = 0;
  double dirty_after_bytes = 0;  // dirty_after pages x 4096
  double dirty_after_pages = 0;
  double dirty_rate = 0, bandwidth = 0, expected_downtime_ms = 0;
  std::string decision, reason;
  std::vector<double> throttle;  // share of each vCPU's time taken away, 0..1
};
std::vector<Round> read_rounds(const json& report);
// Index of the round that decided to switch over (or cancel), if any.
std::ptrdiff_t decision_round(const std::vector<Round>& rounds);

// Figures with their units.
std::string fmt_ms(double ms);        // "345.8 ms"; "unknown" below 0
std::string fmt_duration(double ms);  // ms below 10 s, then seconds
std::string fmt_bytes(double bytes);  // B, KiB, MiB or GiB, whichever reads best
std::string fmt_count(double n);      // 12,345
std::string fmt_num(double v);        // a tick label: 0.25, 40, 1200

// A unit for an axis whose largest value is `max` (bytes or bytes/s):
// its divisor and its name ("KiB", "MiB", "GiB").
struct Unit {
  double divisor;
  const char* name;
};
Unit binary_unit(double max);

// The page's CSS (report_html_style.cc).
std::string_view style_sheet();

// The sections of the page, as HTML fragments.
std::string timeline_svg(const std::vector<Round>& rounds, double max_bandwidth);
std::string downtime_section(const json& report);
std::string rounds_table(const std::vector<Round>& rounds);

// A CSS class for a value that comes from the report: only known words get
// through, so report text never lands in markup unescaped.
std::string_view decision_class(std::string_view decision);
std::string_view phase_class(std::string_view phase);

}  // namespace ferry::migration::html
