// The report page's charts, as inline SVG: the per-round timeline and the
// predicted vs actual downtime bars. Colours come from the page's CSS
// classes (report_html.cc), so the palette lives in one place. Coordinates
// are in a fixed viewBox; the SVG scales to the page's width.
#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "userspace/migration/report_html_parts.hh"

namespace ferry::migration::html {
namespace {

// A value axis from 0: its top and step are "nice" numbers (1, 2, 2.5 or 5
// times a power of ten) in `unit`, so tick labels read 0, 0.5, 1.0, ...
struct Axis {
  Unit unit;
  double top;   // in unit
  double step;  // in unit
};

Axis value_axis(double max, Unit unit) {
  const double m = max / unit.divisor;
  if (!(m > 0)) return {unit, 1, 0.25};
  const double raw = m / 4;
  const double p = std::pow(10, std::floor(std::log10(raw)));
  double step = 10 * p;
  for (double f : {1.0, 2.0, 2.5, 5.0})
    if (raw <= f * p * (1 + 1e-9)) {
      step = f * p;
      break;
    }
  return {unit, std::ceil(m / step - 1e-9) * step, step};
}

// Gridlines and tick labels of a value axis drawn over [top_y, bottom_y].
std::string grid(const Axis& a, double left, double right, double top_y, double bottom_y) {
  std::string out;
  for (double v = 0; v <= a.top * (1 + 1e-9); v += a.step) {
    const double y = bottom_y - v / a.top * (bottom_y - top_y);
    out += fmt::format("<line class=\"grid\" x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>"
                       "<text class=\"tick\" x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>\n",
                       left, y, right, y, left - 8, y + 4, fmt_num(v));
  }
  return out;
}

// The y-axis title, rotated, centred on the panel.
std::string axis_title(const std::string& title, double x, double top_y, double bottom_y) {
  const double y = (top_y + bottom_y) / 2;
  return fmt::format("<text class=\"axis-title\" x=\"{0:.1f}\" y=\"{1:.1f}\" text-anchor=\"middle\" "
                     "transform=\"rotate(-90 {0:.1f} {1:.1f})\">{2}</text>\n",
                     x, y, title);
}

// A series as a line with a marker on each round (markers dropped when
// there are too many rounds to tell them apart).
std::string series(const std::vector<double>& xs, const std::vector<double>& values, const Axis& a,
                   double top_y, double bottom_y, const char* cls) {
  std::string points, dots;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double y = bottom_y - values[i] / a.unit.divisor / a.top * (bottom_y - top_y);
    points += fmt::format("{}{:.1f},{:.1f}", i ? " " : "", xs[i], y);
    if (xs.size() <= 60) dots += fmt::format("<circle class=\"dot {}\" cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3.5\"/>", cls, xs[i], y);
  }
  return fmt::format("<polyline class=\"line {}\" points=\"{}\"/>{}\n", cls, points, dots);
}

}  // namespace

std::string timeline_svg(const std::vector<Round>& rounds, double max_bandwidth) {
  if (rounds.empty()) return "<p class=\"empty\">No rounds to chart.</p>\n";
  constexpr double kW = 960, kLeft = 76, kRight = 936;
  constexpr double kA0 = 34, kA1 = 234;  // panel A: bytes per round
  constexpr double kB0 = 276, kB1 = 396;  // panel B: rates
  constexpr double kH = 440;
  const std::size_t n = rounds.size();
  const double band = (kRight - kLeft) / static_cast<double>(n);
  const double bar = std::min(band * 0.64, 56.0);
  std::vector<double> xs, sent, left, dirty, bw;
  double max_bytes = 0, max_rate = max_bandwidth;
  for (std::size_t i = 0; i < n; ++i) {
    const auto& r = rounds[i];
    xs.push_back(kLeft + band * (static_cast<double>(i) + 0.5));
    sent.push_back(r.bytes);
    left.push_back(r.dirty_after_bytes);
    dirty.push_back(r.dirty_rate);
    bw.push_back(r.bandwidth);
    max_bytes = std::max({max_bytes, r.bytes, r.dirty_after_bytes});
    max_rate = std::max({max_rate, r.dirty_rate, r.bandwidth});
  }
  const Axis a = value_axis(max_bytes, binary_unit(max_bytes));
  const Axis b = value_axis(max_rate, binary_unit(max_rate));
  const auto decided = decision_round(rounds);

  std::string out = fmt::format(
      "<div class=\"chart-wrap\"><svg class=\"chart timeline\" viewBox=\"0 0 {} {}\" role=\"img\" aria-labelledby=\"tl-title\">"
      "<title id=\"tl-title\">Bytes sent per round, dirty memory left after each round, dirty rate and delivered "
      "bandwidth</title>\n",
      kW, kH);
  // The rounds after the switchover decision ran with the vCPUs paused:
  // shaded, so the downtime's share of the timeline stands out.
  if (decided >= 0 && rounds[static_cast<std::size_t>(decided)].decision == "switchover" &&
      static_cast<std::size_t>(decided) + 1 < n) {
    const double x = kLeft + band * static_cast<double>(decided + 1);
    out += fmt::format("<rect class=\"paused\" x=\"{:.1f}\" y=\"{}\" width=\"{:.1f}\" height=\"{}\"/>\n", x, kA0,
                       kRight - x, kB1 - kA0);
  }
  out += fmt::format("<text class=\"panel-title\" x=\"{}\" y=\"{}\">Sent per round and dirty memory left after it</text>\n",
                     kLeft, kA0 - 14);
  out += grid(a, kLeft, kRight, kA0, kA1) + axis_title(a.unit.name, 20, kA0, kA1);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& r = rounds[i];
    double h = r.bytes / a.unit.divisor / a.top * (kA1 - kA0);
    if (r.bytes > 0) h = std::max(h, 1.0);  // a round that sent anything shows
    out += fmt::format("<rect class=\"round-bar\" data-round=\"{:.0f}\"{} x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" "
                       "height=\"{:.1f}\"><title>round {:.0f}: {} in {}</title></rect>\n",
                       r.round, r.decision == "final" ? " data-final=\"1\"" : "", xs[i] - bar / 2, kA1 - h, bar, h,
                       r.round, fmt_bytes(r.bytes), fmt_ms(r.ms));
  }
  out += series(xs, left, a, kA0, kA1, "left");

  out += fmt::format("<text class=\"panel-title\" x=\"{}\" y=\"{}\">Dirty rate and delivered bandwidth</text>\n",
                     kLeft, kB0 - 14);
  out += grid(b, kLeft, kRight, kB0, kB1) + axis_title(std::string(b.unit.name) + "/s", 20, kB0, kB1);
  if (max_bandwidth > 0) {
    const double y = kB1 - max_bandwidth / b.unit.divisor / b.top * (kB1 - kB0);
    out += fmt::format("<line class=\"cap\" x1=\"{}\" y1=\"{:.1f}\" x2=\"{}\" y2=\"{:.1f}\"/>\n", kLeft, y, kRight, y);
  }
  out += series(xs, dirty, b, kB0, kB1, "dirty") + series(xs, bw, b, kB0, kB1, "bw");

  // Round numbers under the lower panel, thinned out so they never collide.
  const std::size_t every = std::max<std::size_t>(1, (n + 23) / 24);
  for (std::size_t i = 0; i < n; i += every)
    out += fmt::format("<text class=\"tick\" x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{:.0f}</text>", xs[i],
                       kB1 + 18, rounds[i].round);
  out += fmt::format("\n<line class=\"axis\" x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\"/>"
                     "<line class=\"axis\" x1=\"{0}\" y1=\"{3}\" x2=\"{2}\" y2=\"{3}\"/>\n"
                     "<text class=\"axis-title\" x=\"{4:.1f}\" y=\"{5}\" text-anchor=\"middle\">round</text>\n",
                     kLeft, kA1, kRight, kB1, (kLeft + kRight) / 2, kB1 + 38);

  // The switchover (or cancel) comes at the end of the round that decided it.
  if (decided >= 0) {
    const bool cancel = rounds[static_cast<std::size_t>(decided)].decision == "cancel";
    const double x = kLeft + band * static_cast<double>(decided + 1);
    const bool near_right = x > kRight - 110;
    out += fmt::format("<line class=\"marker{}\" x1=\"{:.1f}\" y1=\"{}\" x2=\"{:.1f}\" y2=\"{}\"/>"
                       "<text class=\"marker-label{}\" x=\"{:.1f}\" y=\"{}\" text-anchor=\"{}\">{}</text>\n",
                       cancel ? " cancel" : "", x, kA0 - 4, x, kB1, cancel ? " cancel" : "",
                       near_right ? x - 6 : x + 6, kA0 + 10, near_right ? "end" : "start",
                       cancel ? "cancelled" : "switchover");
  }
  return out + "</svg></div>\n";
}

std::string downtime_section(const json& report) {
  const auto& b = member(report, "downtime_breakdown");
  const auto& policy = member(report, "policy");
  const auto& p = member(policy, "predicted_breakdown");
  const double downtime = number(report, "downtime_ms", -1);
  const double predicted = number(policy, "predicted_downtime_ms", -1);
  const double limit = number(report, "downtime_limit_ms");
  struct Part {
    const char* cls;
    const char* name;
    double ms;
    std::string detail;
  };
  const std::vector<Part> want = {
      {"c-pages", "pages", number(p, "pages_ms"), ""},
      {"c-state", "state", number(p, "state_ms"), ""},
      {"c-ready", "round trips", number(p, "round_trips_ms"), ""},
      {"c-commit", "switch costs", number(p, "switch_costs_ms"), ""}};
  const std::vector<Part> got = {
      {"c-pages", "final pages", number(b, "final_pages_ms"), fmt_count(number(b, "final_pages")) + " pages"},
      {"c-state", "state", number(b, "state_ms"), fmt_bytes(number(b, "state_bytes"))},
      {"c-ready", "READY", number(b, "ready_ms"), "destination load " + fmt_ms(number(b, "destination_load_ms"))},
      {"c-commit", "commit", number(b, "commit_ms"), "until the destination confirmed"}};
  double got_sum = 0;
  for (const auto& part : got) got_sum += std::max(0.0, part.ms);
  if (downtime < 0 && predicted < 0 && got_sum <= 0)
    return "<p class=\"empty\">No switchover: the vCPUs were never paused for it, and the VM runs on the source as "
           "before.</p>\n";

  constexpr double kW = 960, kX0 = 150, kX1 = 930, kBar = 30, kRowP = 30, kRowA = 82, kAxisY = 130, kH = 168;
  const double top_ms = std::max({predicted, downtime, got_sum, limit, 1.0});
  const Axis axis = value_axis(top_ms, Unit{1, "ms"});
  auto x_of = [&](double ms) { return kX0 + std::max(0.0, ms) / axis.top * (kX1 - kX0); };
  auto bar = [&](const std::vector<Part>& parts, double y) {
    std::string s;
    double at = 0;
    for (const auto& part : parts) {
      if (part.ms <= 0) continue;
      const double x = x_of(at), w = x_of(at + part.ms) - x;
      s += fmt::format("<rect class=\"seg {}\" x=\"{:.1f}\" y=\"{}\" width=\"{:.1f}\" height=\"{}\"><title>{}: {}</title></rect>",
                       part.cls, x, y, std::max(w, 1.0), kBar, part.name, fmt_ms(part.ms));
      if (w >= 64)
        s += fmt::format("<text class=\"seg-label {}\" x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{}</text>", part.cls,
                         x + w / 2, y + kBar / 2 + 4, fmt_ms(part.ms));
      at += part.ms;
    }
    return s + "\n";
  };
  std::string svg = fmt::format(
      "<div class=\"chart-wrap\"><svg class=\"chart downtime\" viewBox=\"0 0 {} {}\" role=\"img\" aria-labelledby=\"dt-title\">"
      "<title id=\"dt-title\">Predicted and actual downtime, part by part</title>\n",
      kW, kH);
  svg += fmt::format("<text class=\"row-label\" x=\"0\" y=\"{}\">Predicted</text>"
                     "<text class=\"row-sub\" x=\"0\" y=\"{}\">{}</text>\n",
                     kRowP + 13, kRowP + 28, predicted >= 0 ? fmt_ms(predicted) : std::string("none"));
  svg += fmt::format("<text class=\"row-label\" x=\"0\" y=\"{}\">Actual</text>"
                     "<text class=\"row-sub\" x=\"0\" y=\"{}\">{} downtime</text>\n",
                     kRowA + 13, kRowA + 28, fmt_ms(downtime));
  for (double v = 0; v <= axis.top * (1 + 1e-9); v += axis.step)
    svg += fmt::format("<line class=\"grid\" x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\"/>"
                       "<text class=\"tick\" x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>",
                       x_of(v), kRowP - 8, kAxisY, kAxisY + 16, fmt_num(v));
  svg += fmt::format("<text class=\"axis-title\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">ms</text>\n",
                     (kX0 + kX1) / 2, kAxisY + 34);
  svg += bar(want, kRowP) + bar(got, kRowA);
  // Downtime is pause to resume; the parts include the wait for the
  // destination's confirmation after the resume, so it is a mark of its own.
  if (downtime >= 0)
    svg += fmt::format("<line class=\"downtime-mark\" x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\"/>\n",
                       x_of(downtime), kRowA - 5, kRowA + kBar + 5);
  if (limit > 0)
    svg += fmt::format("<line class=\"limit\" x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\"/>"
                       "<text class=\"note-text\" x=\"{3:.1f}\" y=\"{4}\" text-anchor=\"end\">limit {5}</text>\n",
                       x_of(limit), kRowP - 12, kAxisY, x_of(limit) - 4, kRowP - 16, fmt_ms(limit));
  svg += "</svg></div>\n";

  auto list = [](const char* title, const std::vector<Part>& parts, const std::string& total_rows) {
    std::string s = fmt::format("<div class=\"parts\"><h3>{}</h3><table>", title);
    for (const auto& part : parts)
      s += fmt::format("<tr><td><i class=\"sw {}\"></i>{}{}</td><td class=\"num\">{}</td></tr>", part.cls, part.name,
                       part.detail.empty() ? "" : " <span class=\"muted\">(" + part.detail + ")</span>",
                       fmt_ms(part.ms));
    return s + total_rows + "</table></div>";
  };
  std::string lists = "<div class=\"parts-row\">";
  lists += list("Predicted at switchover", want,
                fmt::format("<tr class=\"total\"><td>total</td><td class=\"num\">{}</td></tr>",
                            predicted >= 0 ? fmt_ms(predicted) : std::string("none")));
  lists += list("Actual", got,
                fmt::format("<tr class=\"total\"><td><i class=\"sw mark\"></i>downtime <span class=\"muted\">(paused here "
                            "until running there)</span></td><td class=\"num\">{}</td></tr>"
                            "<tr><td>guest saw <span class=\"muted\">(heartbeat gap)</span></td><td class=\"num\">{}</td></tr>",
                            fmt_ms(downtime), fmt_ms(number(report, "guest_downtime_ms", -1))));
  lists += "</div>\n";
  return "<p class=\"lede\">What the policy predicted when it switched over, next to what the switchover took, on the "
         "same scale.</p>\n" +
         svg + lists +
         "<p class=\"note\">Downtime runs from the pause on the source to the resume on the destination. Commit lasts "
         "until the destination confirms, which includes waiting for the guest's first heartbeat there, so the parts "
         "can add up to more than the downtime (the black mark).</p>\n";
}

}  // namespace ferry::migration::html
