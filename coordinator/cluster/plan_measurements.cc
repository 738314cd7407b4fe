#include "coordinator/cluster/plan_measurements.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace mlaserve {

absl::StatusOr<std::vector<PlanMeasurement>> ParsePlanMeasurements(const std::string& json_text) {
  const nlohmann::json rows = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (!rows.is_array()) return absl::InvalidArgumentError("a scale.json holds an array of rows");
  std::vector<PlanMeasurement> out;
  for (const nlohmann::json& row : rows) {
    if (!row.is_object() || !row.value("error", std::string()).empty()) continue;
    const auto number = [&row](const char* key) {
      return row.contains(key) && row[key].is_number() ? row[key].get<double>() : 0.0;
    };
    PlanMeasurement m{.plan = {.tp = static_cast<int>(number("tp")),
                               .dp_attention = static_cast<int>(number("dp_attention")),
                               .ep = static_cast<int>(number("ep"))},
                      .workers = static_cast<int>(number("workers")),
                      .output_tokens_per_s = number("output_throughput")};
    if (m.plan.tp < 1 || m.plan.dp_attention < 1 || m.plan.ep < 1 || m.workers < 1) continue;
    out.push_back(m);
  }
  return out;
}

absl::StatusOr<std::vector<PlanMeasurement>> ReadPlanMeasurements(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<std::vector<PlanMeasurement>> measured = ParsePlanMeasurements(text.str());
  if (!measured.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", measured.status().message()));
  return measured;
}

}  // namespace mlaserve
