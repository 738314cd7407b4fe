#include "coordinator/api/grpc_service.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "coordinator/api/update_queue.h"
#include "tokenizer/prompt.h"

namespace mlaserve {
namespace {

v1::GenerateResponse ToResponse(const GenerateUpdate& update) {
  v1::GenerateResponse response;
  response.mutable_token_ids()->Add(update.token_ids.begin(), update.token_ids.end());
  for (const TokenLogprobs& logprobs : update.logprobs) {
    v1::TokenLogprobs* out = response.add_logprobs();
    out->set_token_id(logprobs.token);
    out->set_logprob(logprobs.logprob);
    out->mutable_top_token_ids()->Add(logprobs.top_ids.begin(), logprobs.top_ids.end());
    out->mutable_top_logprobs()->Add(logprobs.top_logprobs.begin(), logprobs.top_logprobs.end());
  }
  response.set_text(update.text);
  if (update.finished()) {
    response.set_finish_reason(FinishReasonName(update.finish_reason));
    response.mutable_usage()->set_prompt_tokens(update.prompt_tokens);
    response.mutable_usage()->set_completion_tokens(update.completion_tokens);
    response.mutable_usage()->set_cached_prompt_tokens(update.cached_prompt_tokens);
  }
  return response;
}

}  // namespace

absl::StatusOr<GenerateInput> GrpcService::ToInput(const v1::GenerateRequest& request) const {
  const v1::SamplingParams& p = request.sampling();
  if (p.has_logprobs() && (p.logprobs() < 0 || p.logprobs() > kMaxLogprobs)) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.logprobs must be in [0, ", kMaxLogprobs, "]"));
  }
  GenerateInput input;
  if (request.has_token_ids()) {
    input.prompt_ids.assign(request.token_ids().ids().begin(), request.token_ids().ids().end());
  } else {
    input.prompt_ids = EncodeTextPrompt(engine_.tokenizer(), engine_.model_config(), request.text());
  }
  SamplingOptions& s = input.sampling;
  s.temperature = p.temperature();
  s.top_k = p.top_k();
  s.top_p = p.top_p() == 0 ? 1.0f : p.top_p();
  if (p.has_seed()) s.seed = p.seed();
  s.max_tokens = p.max_tokens() == 0 ? 16 : p.max_tokens();
  s.stop_token_ids.assign(p.stop_token_ids().begin(), p.stop_token_ids().end());
  s.stop.assign(p.stop().begin(), p.stop().end());
  s.ignore_eos = p.has_ignore_eos() && p.ignore_eos();
  s.logprobs = p.has_logprobs() ? p.logprobs() : -1;
  return input;
}

grpc::Status GrpcService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                   grpc::ServerWriter<v1::GenerateResponse>* writer) {
  if (grpc::Status denied = CheckCaller(callers_, *context); !denied.ok()) return denied;
  absl::StatusOr<GenerateInput> input = ToInput(*request);
  if (!input.ok()) return ToGrpcStatus(input.status());
  auto queue = std::make_shared<UpdateQueue>(/*wake_on_each=*/true);
  absl::StatusOr<int64_t> id =
      engine_.Submit(*std::move(input), [queue](const GenerateUpdate& update) { queue->Push(update); });
  if (!id.ok()) {
    metrics_.CountRejected();
    return ToGrpcStatus(id.status());
  }
  bool cancelled = false;
  while (true) {
    const std::vector<GenerateUpdate> updates = queue->Take(absl::Milliseconds(100));
    if (updates.empty() && context->IsCancelled() && !cancelled) {
      engine_.Cancel(*id);  // the final kAbort update still arrives and ends the loop
      cancelled = true;
    }
    for (const GenerateUpdate& update : updates) {
      if (update.finish_reason == FinishReason::kError) return ToGrpcStatus(update.error);
      if (!cancelled && !writer->Write(ToResponse(update))) {
        engine_.Cancel(*id);
        cancelled = true;
      }
      if (update.finished()) {
        return cancelled ? grpc::Status(grpc::StatusCode::CANCELLED, "client went away") : grpc::Status::OK;
      }
    }
  }
}

grpc::Status GrpcService::Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                                   v1::TokenizeResponse* response) {
  if (grpc::Status denied = CheckCaller(callers_, *context); !denied.ok()) return denied;
  std::vector<int32_t> ids = engine_.tokenizer().Encode(request->text());
  response->mutable_token_ids()->Add(ids.begin(), ids.end());
  return grpc::Status::OK;
}

grpc::Status GrpcService::Health(grpc::ServerContext*, const v1::HealthRequest*, v1::HealthResponse* response) {
  EngineHealth health = engine_.Health();
  response->set_serving(health.serving);
  response->set_live_workers(health.live_workers);
  response->set_total_workers(health.total_workers);
  return grpc::Status::OK;
}

grpc::Status GrpcService::ModelInfo(grpc::ServerContext* context, const v1::ModelInfoRequest*,
                                    v1::ModelInfoResponse* response) {
  if (grpc::Status denied = CheckCaller(callers_, *context); !denied.ok()) return denied;
  const ModelConfig& c = engine_.model_config();
  response->set_model(engine_.model_name());
  response->set_model_type(c.model_type);
  response->set_vocab_size(c.vocab_size);
  response->set_max_context(engine_.max_context());
  response->set_num_layers(c.num_hidden_layers);
  response->set_kv_lora_rank(c.kv_lora_rank);
  response->set_qk_rope_head_dim(c.qk_rope_head_dim);
  response->set_block_size(block_size_);
  return grpc::Status::OK;
}

}  // namespace mlaserve
