#include "tools/doctor/report.hh"

#include <fmt/format.h>

namespace ferry::doctor {

std::string_view level_name(Level l) {
  switch (l) {
    case Level::kOk: return "OK";
    case Level::kWarn: return "WARN";
    case Level::kFail: return "FAIL";
  }
  return "?";
}

void Report::add_all(std::vector<Check> cs) {
  for (auto& c : cs) checks_.push_back(std::move(c));
}

bool Report::migration_possible() const { return failures().empty(); }

std::vector<const Check*> Report::failures() const {
  std::vector<const Check*> out;
  for (const auto& c : checks_)
    if (c.level == Level::kFail) out.push_back(&c);
  return out;
}

const Check* Report::find(std::string_view area, std::string_view name) const {
  for (const auto& c : checks_)
    if (c.area == area && c.name == name) return &c;
  return nullptr;
}

std::string Report::render_text(bool color) const {
  auto paint = [color](Level l) -> std::string {
    const auto name = level_name(l);
    if (!color) return fmt::format("{:<4}", name);
    const char* code = l == Level::kOk ? "32" : l == Level::kWarn ? "33" : "31;1";
    return fmt::format("\x1b[{}m{:<4}\x1b[0m", code, name);
  };
  std::string out;
  // The verdict comes first: an operator reading one line must know whether
  // migration can work here and, if not, why.
  const auto fails = failures();
  if (fails.empty()) {
    std::size_t warns = 0;
    for (const auto& c : checks_) warns += c.level == Level::kWarn;
    out += fmt::format("Live migration can work on this host ({} warning{}).\n", warns, warns == 1 ? "" : "s");
  } else {
    out += fmt::format("Live migration CANNOT work on this host: {}\n", fails.front()->detail);
    out += fmt::format("  fix: {}\n", fails.front()->remedy);
  }
  std::string area;
  for (const auto& c : checks_) {
    if (c.area != area) {
      area = c.area;
      out += fmt::format("\n{}\n", area);
    }
    out += fmt::format("  {} {:<24} {}\n", paint(c.level), c.name, c.detail);
    if (c.level != Level::kOk && !c.remedy.empty()) out += fmt::format("       {:<24} -> {}\n", "", c.remedy);
  }
  return out;
}

nlohmann::json Report::to_json() const {
  nlohmann::json checks = nlohmann::json::array();
  for (const auto& c : checks_) {
    checks.push_back({{"area", c.area},
                      {"name", c.name},
                      {"status", level_name(c.level)},
                      {"detail", c.detail},
                      {"remedy", c.remedy},
                      {"value", c.value}});
  }
  nlohmann::json j{{"migration_possible", migration_possible()}, {"checks", checks}};
  const auto fails = failures();
  j["reason"] = fails.empty() ? "" : fails.front()->detail;
  return j;
}

}  // namespace ferry::doctor
