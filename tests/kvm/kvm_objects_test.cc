// The KVM object classes against the real kernel: capability queries and the
// ordering rules KVM enforces, with their error messages.
#include <gtest/gtest.h>

#include <sys/ioctl.h>

#include <algorithm>
#include <cerrno>

#include "kvm/guest_memory.hh"
#include "kvm/system.hh"
#include "kvm/vm.hh"

namespace ferry::kvm {
namespace {

TEST(KvmObjects, OpensAndReportsApiAndCapabilities) {
  auto kvm = Kvm::open();
  ASSERT_TRUE(kvm) << kvm.error().what();
  EXPECT_EQ(kvm->api_version(), 12);
  auto msrs = kvm->msr_index_list();
  ASSERT_TRUE(msrs) << msrs.error().what();
  EXPECT_GT(msrs->size(), 10u);
  // IA32_TSC (0x10) is always saveable: a list without it is garbage.
  EXPECT_NE(std::find(msrs->begin(), msrs->end(), 0x10u), msrs->end());
  auto cpuid = kvm->supported_cpuid();
  ASSERT_TRUE(cpuid) << cpuid.error().what();
  EXPECT_FALSE(cpuid->empty());
  EXPECT_EQ(cpuid->front().function, 0u);
}

TEST(KvmObjects, DirtyRingMustBeEnabledBeforeVcpus) {
  auto kvm = Kvm::open();
  ASSERT_TRUE(kvm) << kvm.error().what();
  auto vm = kvm->create_vm();
  ASSERT_TRUE(vm) << vm.error().what();
  auto vcpu = vm->create_vcpu(0);
  ASSERT_TRUE(vcpu) << vcpu.error().what();
  EXPECT_EQ(vcpu->dirty_ring(), nullptr);
  auto st = vm->enable_dirty_ring(64 * 1024);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message().find("before any vCPU"), std::string::npos) << st.error().what();
}

TEST(KvmObjects, KernelItselfRefusesTheRingAfterAVcpu) {
  // The rule Vm::enable_dirty_ring enforces is the kernel's: asked directly,
  // KVM refuses the ring once a vCPU exists.
  auto kvm = Kvm::open();
  ASSERT_TRUE(kvm) << kvm.error().what();
  auto vm = kvm->create_vm();
  ASSERT_TRUE(vm);
  auto vcpu = vm->create_vcpu(0);
  ASSERT_TRUE(vcpu);
  kvm_enable_cap cap{};
  cap.cap = vm->check_extension(KVM_CAP_DIRTY_LOG_RING_ACQ_REL) ? KVM_CAP_DIRTY_LOG_RING_ACQ_REL : KVM_CAP_DIRTY_LOG_RING;
  cap.args[0] = 64 * 1024;
  EXPECT_EQ(::ioctl(vm->fd(), KVM_ENABLE_CAP, &cap), -1);
  EXPECT_EQ(errno, EINVAL);
}

TEST(KvmObjects, DirtyRingSizeIsValidated) {
  auto kvm = Kvm::open();
  ASSERT_TRUE(kvm) << kvm.error().what();
  auto vm = kvm->create_vm();
  ASSERT_TRUE(vm);
  auto tiny = vm->enable_dirty_ring(1024);
  ASSERT_FALSE(tiny);
  EXPECT_NE(tiny.error().message().find(">= the page size"), std::string::npos) << tiny.error().what();
  auto odd = vm->enable_dirty_ring(3000);
  ASSERT_FALSE(odd);
  EXPECT_NE(odd.error().message().find("power of two"), std::string::npos) << odd.error().what();
  const int max = std::max(vm->check_extension(KVM_CAP_DIRTY_LOG_RING), vm->check_extension(KVM_CAP_DIRTY_LOG_RING_ACQ_REL));
  ASSERT_GT(max, 0) << "this KVM has no dirty ring";
  auto big = vm->enable_dirty_ring(static_cast<std::uint32_t>(max) * 2);
  ASSERT_FALSE(big);
  EXPECT_NE(big.error().message().find("kernel maximum"), std::string::npos) << big.error().what();
  ASSERT_TRUE(vm->enable_dirty_ring(static_cast<std::uint32_t>(max)));
  EXPECT_EQ(vm->dirty_ring_bytes(), static_cast<std::uint32_t>(max));
}

TEST(KvmObjects, OverlappingMemorySlotsAreRefusedWithContext) {
  auto kvm = Kvm::open();
  ASSERT_TRUE(kvm);
  auto vm = kvm->create_vm();
  ASSERT_TRUE(vm);
  auto a = GuestRegion::create(0, 0, 1 << 20, "a");
  auto b = GuestRegion::create(1, 0x80000, 1 << 20, "b");
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(vm->set_memory_region(*a, false));
  auto st = vm->set_memory_region(*b, false);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().sys_errno(), EEXIST);
  EXPECT_NE(st.error().message().find("slot 1 gpa 0x80000"), std::string::npos) << st.error().what();
}

}  // namespace
}  // namespace ferry::kvm
