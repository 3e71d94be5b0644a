// KernelView for builds without eBPF (FERRY_BPF=OFF): the adaptive policy
// runs on the engine's own counters and the report says why.
#include "userspace/migration/kernel_view.hh"

namespace ferry::migration {
namespace {

class NoView final : public KernelView {
 public:
  void watch_socket(int) override {}
  void round_begin() override {}
  std::optional<KernelRound> round_end() override { return std::nullopt; }
  std::string describe() const override {
    return "dirty rate: harvests; link: bytes pushed (this ferry was built without eBPF: FERRY_BPF=OFF)";
  }
};

}  // namespace

std::unique_ptr<KernelView> KernelView::open(bool) { return std::make_unique<NoView>(); }

}  // namespace ferry::migration
