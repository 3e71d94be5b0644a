#pragma once
// `ferry doctor`'s model: a list of checks, each OK / WARN / FAIL with a
// one-line remedy, grouped by area. FAIL means live migration cannot work
// on this host; WARN means it works with a degraded feature.
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ferry::doctor {

enum class Level { kOk, kWarn, kFail };

struct Check {
  std::string area;    // "kvm", "io_uring", "ebpf", "system"
  std::string name;    // stable identifier, e.g. "dirty_ring"
  Level level = Level::kOk;
  std::string detail;  // what was found
  std::string remedy;  // one line; empty when OK
  nlohmann::json value;  // the raw figure for scripts (size, version, bool)
};

class Report {
 public:
  void add(Check c) { checks_.push_back(std::move(c)); }
  void add_all(std::vector<Check> cs);
  const std::vector<Check>& checks() const { return checks_; }

  // Live migration is possible iff nothing FAILed.
  bool migration_possible() const;
  // The checks that FAILed, in order: the "reason first" of the verdict.
  std::vector<const Check*> failures() const;
  const Check* find(std::string_view area, std::string_view name) const;

  std::string render_text(bool color) const;
  nlohmann::json to_json() const;

 private:
  std::vector<Check> checks_;
};

std::string_view level_name(Level l);

}  // namespace ferry::doctor
