// The progress line of a weight load (layers done, bytes read, GB/s), the
// same on the CLI and on workers, so a slow disk or a slow PCIe link shows.
#ifndef MLASERVE_WORKER_LOAD_REPORT_H_
#define MLASERVE_WORKER_LOAD_REPORT_H_

#include <string>

#include "worker/model_weights.h"

namespace mlaserve {

// A LoadProgress that prints "<who>: loading weights, layer i/N, X GB in Y s
// (Z GB/s)" to stderr after each layer, timed from this call.
LoadProgress LoadReporter(std::string who);

}  // namespace mlaserve

#endif  // MLASERVE_WORKER_LOAD_REPORT_H_
