// receive_vm: the destination session (destination_session.cc) with this
// host's KVM as the host that builds the VM (kvm_vm.hh).
#include "userspace/migration/destination.hh"

#include "userspace/migration/kvm_vm.hh"

namespace ferry::migration {

Result<Received> receive_vm(transport::Listener& listener, const ReceiveOptions& options, kvm::Serial::Sink console,
                            kvm::Machine::Notify stopped) {
  KvmIncomingHost host(std::move(console), std::move(stopped), options.huge_pages, options.nets, options.announce);
  auto r = receive_migration(listener, options, host);
  if (!r) return std::unexpected(std::move(r.error()));
  // KvmIncomingHost builds nothing but KvmIncomingVm.
  auto& vm = static_cast<KvmIncomingVm&>(*r->vm);
  return Received{vm.take(), r->figures};
}

}  // namespace ferry::migration
