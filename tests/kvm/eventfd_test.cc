// irqfd and ioeventfd against the real kernel: a guest's port write that
// matches an ioeventfd signals it inside KVM (no exit reaches the VMM),
// one that does not match still exits, and a dropped ioeventfd lets them
// exit again; a signalled irqfd raises its GSI in the in-kernel PIC.
#include <gtest/gtest.h>

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "kvm/eventfd.hh"
#include "kvm/guest_memory.hh"
#include "kvm/real_mode_code.hh"
#include "kvm/system.hh"
#include "kvm/vm.hh"
#include "tests/kvm/wait.hh"

namespace ferry::kvm {
namespace {

constexpr std::uint16_t kKickPort = 0x510;

// Writes 0x42 then 0x43 to kKickPort, then halts.
std::vector<std::uint8_t> kick_twice() {
  return {0xBA, kKickPort & 0xff, kKickPort >> 8,  // mov dx, kKickPort
          0xB0, 0x42, 0xEE,                        // mov al, 0x42; out dx, al
          0xB0, 0x43, 0xEE,                        // mov al, 0x43; out dx, al
          0xF4};                                   // hlt
}

TEST(EventFds, IoEventFdTakesMatchingWritesWithoutAnExit) {
  auto mem = GuestRegion::create(0, 0, 64 * kPageSize, "ferry-ioeventfd-test");
  ASSERT_TRUE(mem) << mem.error().what();
  auto kvm = Kvm::open();
  ASSERT_TRUE(kvm) << kvm.error().what();
  auto vm = kvm->create_vm();
  ASSERT_TRUE(vm) << vm.error().what();
  ASSERT_TRUE(vm->set_memory_region(*mem, false));
  auto vcpu = vm->create_vcpu(0);
  ASSERT_TRUE(vcpu) << vcpu.error().what();
  auto kick = IoEventFd::assign(*vm, {Space::kPio, kKickPort, 1, 0x42});
  ASSERT_TRUE(kick) << kick.error().what();
  // The same registration twice is refused by KVM, with the reason.
  auto twice = IoEventFd::assign(*vm, {Space::kPio, kKickPort, 1, 0x42});
  ASSERT_FALSE(twice);
  EXPECT_NE(twice.error().message().find("KVM_IOEVENTFD"), std::string::npos) << twice.error().what();

  const auto code = kick_twice();
  std::memcpy(mem->host_at(0x1000), code.data(), code.size());
  ASSERT_TRUE(real_mode_enter(*vcpu, 0x1000));
  std::vector<std::uint8_t> exits_seen;  // values of port exits that reached us
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(vcpu->run_once());
    const kvm_run& run = vcpu->run();
    if (run.exit_reason == KVM_EXIT_HLT) break;
    ASSERT_EQ(run.exit_reason, KVM_EXIT_IO) << "exit " << run.exit_reason;
    ASSERT_EQ(run.io.port, kKickPort);
    exits_seen.push_back(*(reinterpret_cast<const std::uint8_t*>(&run) + run.io.data_offset));
  }
  EXPECT_EQ(vcpu->run().exit_reason, KVM_EXIT_HLT);
  EXPECT_EQ(exits_seen, std::vector<std::uint8_t>{0x43});  // 0x42 never left KVM
  auto n = kick->event().take();
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 1u);

  // Gone with its object: the same write exits to the VMM again.
  { IoEventFd dropped = std::move(*kick); }
  ASSERT_TRUE(real_mode_enter(*vcpu, 0x1000));
  ASSERT_TRUE(vcpu->run_once());
  EXPECT_EQ(vcpu->run().exit_reason, KVM_EXIT_IO);
  EXPECT_EQ(*(reinterpret_cast<const std::uint8_t*>(&vcpu->run()) + vcpu->run().io.data_offset), 0x42);
}

// The master PIC's interrupt request register, as KVM holds it.
std::uint8_t pic_irr(const Vm& vm) {
  kvm_irqchip chip{};
  chip.chip_id = KVM_IRQCHIP_PIC_MASTER;
  if (::ioctl(vm.fd(), KVM_GET_IRQCHIP, &chip) < 0) {
    ADD_FAILURE() << "KVM_GET_IRQCHIP: " << std::strerror(errno);
    return 0;
  }
  return chip.chip.pic.irr;
}

TEST(EventFds, IrqFdRaisesItsGsiInTheInKernelPic) {
  auto kvm = Kvm::open();
  ASSERT_TRUE(kvm) << kvm.error().what();
  auto vm = kvm->create_vm();
  ASSERT_TRUE(vm) << vm.error().what();
  auto without = IrqFd::assign(*vm, 5);
  ASSERT_FALSE(without);  // no irqchip yet
  EXPECT_NE(without.error().message().find("no in-kernel irqchip"), std::string::npos);
  ASSERT_TRUE(vm->create_irqchip());
  auto irq = IrqFd::assign(*vm, 5);
  ASSERT_TRUE(irq) << irq.error().what();
  EXPECT_EQ(pic_irr(*vm) & (1 << 5), 0);
  ASSERT_TRUE(irq->trigger());
  // KVM injects from a work item: the request shows up shortly after.
  EXPECT_TRUE(test::wait_until([&] { return (pic_irr(*vm) & (1 << 5)) != 0; }, std::chrono::seconds(5)))
      << "IRR " << int(pic_irr(*vm));
}

}  // namespace
}  // namespace ferry::kvm
