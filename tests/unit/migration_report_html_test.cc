// The HTML migration report (`ferry migrate --report`): one bar per round in
// order, peer text escaped, nothing fetched, and any report renders, even an
// empty or malformed one. tests/e2e/report_html_browser_test.cc checks the
// page in a real browser.
#include <gtest/gtest.h>

#include <cerrno>
#include <fstream>
#include <regex>
#include <sstream>

#include "userspace/migration/report_html.hh"
#include "userspace/migration/status.hh"
#include "tests/temp_dir.hh"

namespace ferry::migration {
namespace {

using nlohmann::json;

std::size_t count(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + needle.size())) ++n;
  return n;
}

// Five rounds: four of pre-copy, the fourth deciding to switch over, then
// the final one with the vCPUs paused.
MigrationStatus migrated() {
  MigrationStatus s;
  s.phase = Phase::kMigrated;
  s.to = "10.0.0.2:4000";
  s.security_mode = "psk";
  s.security_path = "/etc/ferry/psk";
  s.channel = "TLS 1.3 TLS_AES_128_GCM_SHA256 (pre-shared key), kernel TLS";
  s.streams = 2;
  s.memory_bytes = 256ull << 20;
  s.downtime_limit_ms = 300;
  s.elapsed_ms = 4321.5;
  s.downtime_ms = 123.4;
  s.guest_downtime_ms = 140.2;
  s.final_pages_ms = 80, s.state_ms = 20, s.ready_ms = 3, s.dest_load_ms = 1.5, s.commit_ms = 25;
  s.bytes_sent = 300ull << 20;
  s.verified = true;
  s.policy = "adaptive";
  s.policy_inputs = "kernel (eBPF)";
  s.predicted_downtime_ms = 131.9;
  s.predict_pages_ms = 90, s.predict_state_ms = 21, s.predict_rtt_ms = 0.9, s.predict_fixed_ms = 20;
  const std::uint64_t bytes[] = {200ull << 20, 60ull << 20, 25ull << 20, 10ull << 20, 5ull << 20};
  for (std::uint32_t i = 0; i < 5; ++i) {
    RoundFigures r;
    r.round = i;
    r.bytes = bytes[i];
    r.pages = bytes[i] / 4096;
    r.ms = 1000.0 / (i + 1);
    r.dirty_after = i == 4 ? 0 : 4000 >> i;
    r.dirty_rate = 30.0 * 1048576;
    r.bandwidth = 200.0 * 1048576;
    r.expected_downtime_ms = i == 4 ? 0 : 900.0 / (i + 1);
    r.decision = i == 3 ? "switchover" : i == 4 ? "final" : "continue";
    r.reason = fmt::format("reason of round {}", i);
    r.throttle = {0.0, i >= 2 ? 0.4 : 0.0};
    s.rounds.push_back(r);
  }
  return s;
}

TEST(MigrationReportHtml, DrawsOneBarPerRoundInOrderSizedByBytes) {
  const auto page = report_html(to_json(migrated()));
  EXPECT_EQ(count(page, "class=\"round-bar\""), 5u);
  // In the order of the rounds array, each as tall as its bytes.
  const std::regex bar(R"re(class="round-bar" data-round="(\d+)"[^>]* height="([0-9.]+)")re");
  std::vector<int> order;
  std::vector<double> heights;
  for (auto it = std::sregex_iterator(page.begin(), page.end(), bar); it != std::sregex_iterator(); ++it) {
    order.push_back(std::stoi((*it)[1]));
    heights.push_back(std::stod((*it)[2]));
  }
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
  ASSERT_EQ(heights.size(), 5u);
  EXPECT_NEAR(heights[1] / heights[0], 60.0 / 200, 0.02);
  EXPECT_NEAR(heights[4] / heights[0], 5.0 / 200, 0.02);
  // One table row per round, the switchover marked where it was decided.
  EXPECT_EQ(count(page, "<span class=\"pill switchover\">switchover</span>"), 1u);
  EXPECT_EQ(count(page, "<line class=\"marker\""), 1u);
  EXPECT_EQ(count(page, "reason of round "), 5u);
}

TEST(MigrationReportHtml, ShowsTheHeaderFiguresWithUnits) {
  const auto page = report_html(to_json(migrated()));
  for (const char* want : {"10.0.0.2:4000", "badge migrated", "123.4&nbsp;ms", "131.9&nbsp;ms", "140.2&nbsp;ms",
                           "4321.5&nbsp;ms", "300.0&nbsp;MiB", ">adaptive<", "kernel (eBPF)", ">yes<",
                           "limit 300.0&nbsp;ms", "destination load 1.5&nbsp;ms", "switch costs",
                           "channel: TLS 1.3 TLS_AES_128_GCM_SHA256 (pre-shared key), kernel TLS"})
    EXPECT_NE(page.find(want), std::string::npos) << want;
  // The text report says it too, and the JSON round-trips it.
  const auto text = report_text(migrated());
  EXPECT_NE(text.find("  channel         TLS 1.3 TLS_AES_128_GCM_SHA256 (pre-shared key), kernel TLS\n"),
            std::string::npos)
      << text;
  const auto back = status_from_json(to_json(migrated()));
  EXPECT_EQ(back.security_mode, "psk");
  EXPECT_EQ(back.security_path, "/etc/ferry/psk");
  EXPECT_EQ(back.channel, migrated().channel);
}

TEST(MigrationReportHtml, EscapesTextFromThePeer) {
  auto s = migrated();
  const std::string hostile = "<script>alert(1)</script>&\"'";
  s.rounds[2].reason = hostile;
  s.error = hostile;
  s.to = hostile;
  s.policy_inputs = hostile;
  s.rounds[1].decision = hostile;
  const auto page = report_html(to_json(s));
  EXPECT_EQ(page.find("<script"), std::string::npos);
  EXPECT_EQ(page.find("alert(1)</script>"), std::string::npos);
  EXPECT_GE(count(page, "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#39;"), 5u);
  // A decision the page does not know never becomes a CSS class.
  EXPECT_NE(page.find("<span class=\"pill other\">&lt;script&gt;"), std::string::npos);
}

TEST(MigrationReportHtml, IsSelfContained) {
  const auto page = report_html(to_json(migrated()));
  for (const char* banned : {"http://", "https://", "src=", "href=", "<script", "@import", "url(", "<link", "@font-face"})
    EXPECT_EQ(page.find(banned), std::string::npos) << banned;
  EXPECT_NE(page.find("http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';"), std::string::npos);
}

TEST(MigrationReportHtml, RendersAFailedMigrationWithoutRounds) {
  MigrationStatus s;
  s.phase = Phase::kFailed;
  s.to = "10.0.0.2:4000";
  s.error = "connect: Connection refused";
  const auto page = report_html(to_json(s));
  EXPECT_EQ(count(page, "class=\"round-bar\""), 0u);
  EXPECT_NE(page.find("badge failed"), std::string::npos);
  EXPECT_NE(page.find("connect: Connection refused"), std::string::npos);
  EXPECT_NE(page.find("No switchover"), std::string::npos);
  EXPECT_NE(page.find("No rounds"), std::string::npos);
  EXPECT_NE(page.find("</html>"), std::string::npos);
}

TEST(MigrationReportHtml, MarksACancelledMigrationWhereItWasDecided) {
  auto s = migrated();
  s.phase = Phase::kCancelled;
  s.rounds.pop_back();
  s.rounds.back().decision = "cancel";
  s.downtime_ms = -1;
  s.predicted_downtime_ms = -1;
  const auto page = report_html(to_json(s));
  EXPECT_EQ(count(page, "class=\"round-bar\""), 4u);
  EXPECT_NE(page.find("<line class=\"marker cancel\""), std::string::npos);
  EXPECT_NE(page.find("badge cancelled"), std::string::npos);
}

TEST(MigrationReportHtml, SurvivesMissingAndMistypedFields) {
  for (const json& j : {json(), json::array(), json::object(), json{{"rounds", "x"}, {"downtime_ms", "slow"}},
                        json{{"rounds", {1, "two", nullptr, json::object()}}, {"policy", 7}, {"phase", nullptr}},
                        json{{"rounds", {{{"bytes", -5}, {"throttle", "none"}, {"decision", 3}}}}}}) {
    std::string page;
    ASSERT_NO_THROW(page = report_html(j)) << j.dump();
    EXPECT_NE(page.find("</html>"), std::string::npos) << j.dump();
  }
  EXPECT_EQ(count(report_html(json{{"rounds", {1, "two", nullptr, json::object()}}}), "class=\"round-bar\""), 4u);
}

TEST(MigrationReportHtml, EscapesEveryMarkupCharacter) {
  EXPECT_EQ(html_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
  EXPECT_EQ(html_escape("plain text 1.5 MiB/s"), "plain text 1.5 MiB/s");
  EXPECT_EQ(html_escape(""), "");
}

TEST(MigrationReportHtml, WritesThePageAndNamesThePathWhenItCannot) {
  test::TempDir dir;
  ASSERT_FALSE(dir.path.empty());
  const auto report = to_json(migrated());
  const std::string path = dir.path + "/report.html";
  ASSERT_TRUE(write_report_html(path, report));
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_EQ(ss.str(), report_html(report));
  EXPECT_FALSE(std::ifstream(path + ".partial").good());  // renamed into place

  auto bad = write_report_html(dir.path + "/missing/report.html", report);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().sys_errno(), ENOENT);
  EXPECT_NE(bad.error().what().find("missing/report.html"), std::string::npos) << bad.error().what();
}

}  // namespace
}  // namespace ferry::migration
