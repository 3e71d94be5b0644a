#include "userspace/control/migration_follower.hh"

namespace ferry::control {

Result<json> MigrationFollower::poll(std::chrono::milliseconds timeout) {
  json page;
  // Bounded: a migration adds rounds far slower than pages arrive, but a
  // peer that answered nonsense must not keep us here.
  for (int pages = 0; pages < 100000; ++pages) {
    auto r = call(vm_, json{{"cmd", "migration"}, {"since_round", rounds_.size()}}, timeout);
    if (!r) return std::unexpected(r.error());
    page = std::move(*r);
    if (!page.is_object() || !page.contains("rounds") || !page["rounds"].is_array())
      return fail("malformed migration status from {}", vm_);
    const auto total = page.value("rounds_total", std::size_t{0});
    if (total < rounds_.size()) {
      // Another migration started since the last poll: start over.
      rounds_ = json::array();
      continue;
    }
    for (auto& round : page["rounds"]) rounds_.push_back(std::move(round));
    if (rounds_.size() >= total || page["rounds"].empty()) break;
  }
  page["rounds"] = rounds_;
  page.erase("rounds_total");
  page.erase("rounds_from");
  return page;
}

}  // namespace ferry::control
