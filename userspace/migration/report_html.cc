// The HTML report page: its head, the header with the key figures, then the
// charts (report_html_svg.cc), the rounds table (report_html_parts.cc) and a
// footer; the CSS is in report_html_style.cc.
#include "userspace/migration/report_html.hh"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>

#include "userspace/base/unique_fd.hh"
#include "userspace/migration/report_html_parts.hh"

namespace ferry::migration {
namespace {

using html::fmt_bytes;
using html::fmt_count;
using html::fmt_duration;
using html::fmt_ms;
using html::member;
using html::number;
using html::text;

// Nothing may be fetched: no scripts, fonts, images or styles from
// anywhere, inline styles only. The browser test relies on this too: any
// fetch the page tried would be blocked and logged to the console.
constexpr const char* kCsp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

std::string card(const std::string& key, const std::string& value, const std::string& sub) {
  return fmt::format("<div class=\"card\"><div class=\"k\">{}</div><div class=\"v\">{}</div><div class=\"s\">{}</div></div>\n",
                     key, value, sub.empty() ? "&nbsp;" : sub);
}

// A legend entry: a tiny SVG swatch drawn with the chart's own classes.
std::string legend_item(const std::string& swatch, const std::string& label) {
  return fmt::format("<li><svg width=\"22\" height=\"12\" viewBox=\"0 0 22 12\" aria-hidden=\"true\">{}</svg>{}</li>",
                     swatch, label);
}

std::string timeline_legend(double max_bandwidth) {
  std::string s = "<ul class=\"legend\">";
  s += legend_item("<rect class=\"c-pages\" x=\"3\" y=\"1\" width=\"16\" height=\"10\"/>", "sent in the round");
  s += legend_item("<rect class=\"c-final\" x=\"3\" y=\"1\" width=\"16\" height=\"10\"/>",
                   "final round (vCPUs paused)");
  s += legend_item("<line class=\"line left\" x1=\"0\" y1=\"6\" x2=\"22\" y2=\"6\"/><circle class=\"dot left\" cx=\"11\" cy=\"6\" r=\"3\"/>",
                   "dirty memory left after the round");
  s += legend_item("<line class=\"line dirty\" x1=\"0\" y1=\"6\" x2=\"22\" y2=\"6\"/><circle class=\"dot dirty\" cx=\"11\" cy=\"6\" r=\"3\"/>",
                   "dirty rate");
  s += legend_item("<line class=\"line bw\" x1=\"0\" y1=\"6\" x2=\"22\" y2=\"6\"/><circle class=\"dot bw\" cx=\"11\" cy=\"6\" r=\"3\"/>",
                   "delivered bandwidth");
  if (max_bandwidth > 0)
    s += legend_item("<line class=\"cap\" x1=\"0\" y1=\"6\" x2=\"22\" y2=\"6\"/>",
                     "bandwidth cap (" + fmt_bytes(max_bandwidth) + "/s)");
  s += legend_item("<line class=\"marker-swatch\" x1=\"11\" y1=\"0\" x2=\"11\" y2=\"12\"/>", "switchover");
  return s + "</ul>\n";
}

std::string header(const nlohmann::json& r, std::size_t rounds) {
  const std::string phase = text(r, "phase"), to = text(r, "to"), error = text(r, "error");
  const auto& policy = member(r, "policy");
  const double downtime = number(r, "downtime_ms", -1), limit = number(r, "downtime_limit_ms");
  const double predicted = number(policy, "predicted_downtime_ms", -1);
  std::string out = fmt::format(
      "<header><div class=\"eyebrow\">Ferry live migration report</div>\n"
      "<h1>Migration to <span class=\"mono\">{}</span><span class=\"badge {}\">{}</span></h1>\n"
      "<div class=\"sub\">session <span class=\"mono\">{}</span> &middot; {} guest memory &middot; dirty tracking: {}</div>\n",
      to.empty() ? "?" : html_escape(to), html::phase_class(phase), phase.empty() ? "unknown" : html_escape(phase),
      html_escape(text(r, "session")), fmt_bytes(number(r, "memory_bytes")),
      text(r, "dirty_backend").empty() ? "&ndash;" : html_escape(text(r, "dirty_backend")));
  if (r.contains("security") && r["security"].is_object()) {
    const std::string channel = text(r["security"], "channel");
    if (!channel.empty()) out += fmt::format("<div class=\"sub\">channel: {}</div>\n", html_escape(channel));
  }
  if (!error.empty())
    out += fmt::format("<p class=\"alert\"><strong>Error:</strong> {}</p>\n", html_escape(error));
  if (phase == "outcome-unknown")
    out += "<p class=\"alert unknown\"><strong>Outcome unknown:</strong> COMMIT was sent but not confirmed. The VM is "
           "paused on the source with its full state; settle it with <span class=\"mono\">ferry resolve</span>.</p>\n";

  // Actual next to predicted: the one comparison everyone looks for first.
  // Without a switchover (failed or cancelled before it) there was none.
  const bool switched = downtime >= 0 || phase == "migrated" || phase == "outcome-unknown";
  std::string dt_sub = limit > 0 ? "limit " + fmt_ms(limit) : std::string("no limit");
  if (!switched) dt_sub = "no switchover: the VM runs on the source";
  else if (limit > 0 && downtime >= 0)
    dt_sub += downtime <= limit ? fmt::format(", {} to spare", fmt_ms(limit - downtime))
                                : fmt::format(", over it by {}", fmt_ms(downtime - limit));
  out += "<div class=\"cards\">\n";
  out += fmt::format(
      "<div class=\"card wide\"><div class=\"pair\"><div><div class=\"k\">Downtime</div><div class=\"v{}\">{}</div></div>"
      "<div><div class=\"k\">Predicted</div><div class=\"v pred\">{}</div></div></div><div class=\"s\">{}</div></div>\n",
      limit > 0 && downtime > limit ? " over" : "", switched ? fmt_ms(downtime) : "none",
      predicted >= 0 ? fmt_ms(predicted) : "none", dt_sub);
  const double stall = number(r, "precopy_guest_stall_ms", -1);
  out += card("Guest-seen downtime", switched ? fmt_ms(number(r, "guest_downtime_ms", -1)) : "&ndash;",
              stall >= 0 ? "longest pre-copy stall " + fmt_ms(stall) : std::string("heartbeat gap"));
  out += card("Total time", fmt_duration(number(r, "elapsed_ms", -1)), "");
  out += card("Rounds", std::to_string(rounds), "");
  out += card("Sent", fmt_bytes(number(r, "bytes_sent")),
              fmt_count(number(r, "pages_sent")) + " pages, " + fmt_count(number(r, "resent_pages")) + " re-sent");
  out += card("Streams", fmt::format("{:.0f}", number(r, "streams", 1)),
              text(r, "zero_copy") == "active" ? "zero-copy" : "plain sends");
  const bool verified = member(r, "verified").is_boolean() && member(r, "verified").get<bool>();
  out += card("Verified", verified ? "yes" : "no", verified ? "memory digests matched" : "not checked (--verify)");
  out += "</div>\n<dl class=\"facts\">";
  out += fmt::format("<dt>Policy</dt><dd>{}</dd><dt>Inputs</dt><dd>{}</dd>",
                     text(policy, "rule").empty() ? "&ndash;" : html_escape(text(policy, "rule")),
                     text(policy, "inputs").empty() ? "&ndash;" : html_escape(text(policy, "inputs")));
  if (const double cal = number(policy, "calibration_pause_ms", -1); cal >= 0) {
    const double n = number(policy, "calibration_pauses", 1);
    out += n > 1 ? fmt::format("<dt>Calibration</dt><dd>{:.0f} pauses ({} in all) during pre-copy measured the switch "
                               "costs; the smallest counts</dd>", n, fmt_ms(cal))
                 : fmt::format("<dt>Calibration</dt><dd>one {} pause during pre-copy measured the switch costs</dd>",
                               fmt_ms(cal));
  }
  if (const double hot = number(policy, "held_back_pages"); hot > 0)
    out += fmt::format("<dt>Hot pages</dt><dd>{} held back and sent once at switchover</dd>", fmt_count(hot));
  if (const double cap = number(r, "max_bandwidth_bytes_per_s"); cap > 0)
    out += fmt::format("<dt>Bandwidth cap</dt><dd>{}/s</dd>", fmt_bytes(cap));
  return out + "</dl>\n</header>\n";
}

}  // namespace

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string report_html(const nlohmann::json& report) {
  const auto rounds = html::read_rounds(report);
  const double cap = number(report, "max_bandwidth_bytes_per_s");
  const std::string phase = text(report, "phase"), to = text(report, "to");
  std::string out = fmt::format(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
      "<meta http-equiv=\"Content-Security-Policy\" content=\"{}\">\n"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
      "<title>Ferry migration to {}: {}</title>\n<style>{}</style></head>\n<body><main>\n",
      kCsp, html_escape(to), html_escape(phase), html::style_sheet());
  out += header(report, rounds.size());
  out += "<section><h2>Timeline</h2>\n";
  if (!rounds.empty())
    out += "<p class=\"lede\">One bar per round. The dashed line marks the policy's decision to switch over; the "
           "shaded round after it ran with the vCPUs paused.</p>\n" +
           timeline_legend(cap);
  out += html::timeline_svg(rounds, cap) + "</section>\n";
  out += "<section><h2>Downtime: predicted vs actual</h2>\n" + html::downtime_section(report) + "</section>\n";
  out += "<section><h2>Rounds</h2>\n" + html::rounds_table(rounds) + "</section>\n";
  out += fmt::format(
      "<footer>Written by <span class=\"mono\">ferry migrate --report</span> from the migration's JSON report "
      "(<span class=\"mono\">--json</span>). Zero-copy: {}. MiB = 2<sup>20</sup> bytes; rates are smoothed as the "
      "policy saw them.</footer>\n</main></body></html>\n",
      text(report, "zero_copy").empty() ? "&ndash;" : html_escape(text(report, "zero_copy")));
  return out;
}

Status write_report_html(const std::string& path, const nlohmann::json& report) {
  const std::string page = report_html(report);
  const std::string tmp = path + ".partial";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("create {}", tmp), e));
  }
  std::string_view left = page;
  while (!left.empty()) {
    const ssize_t n = ::write(fd.get(), left.data(), left.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int e = errno;
      ::unlink(tmp.c_str());
      return std::unexpected(sys_error(fmt::format("write {}", tmp), e));
    }
    left.remove_prefix(static_cast<std::size_t>(n));
  }
  // close() reports write errors some filesystems (NFS) only find then.
  if (::close(fd.release()) < 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    return std::unexpected(sys_error(fmt::format("close {}", tmp), e));
  }
  if (::rename(tmp.c_str(), path.c_str()) < 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    return std::unexpected(sys_error(fmt::format("rename {} to {}", tmp, path), e));
  }
  return {};
}

}  // namespace ferry::migration
