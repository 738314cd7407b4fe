#include "coordinator/serving/callback_thread.h"

#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace mlaserve {
namespace {

TEST(CallbackThreadTest, RunsCallbacksInPostedOrderOffTheCallersThread) {
  std::vector<int> ran;  // touched only by the callback thread until Flush returns
  std::thread::id where;
  CallbackThread callbacks;
  for (int i = 0; i < 1000; ++i) {
    callbacks.Post([&ran, &where, i] {
      ran.push_back(i);
      where = std::this_thread::get_id();
    });
  }
  callbacks.Flush();
  ASSERT_EQ(ran.size(), 1000u);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(ran[i], i);
  EXPECT_NE(where, std::this_thread::get_id());
}

TEST(CallbackThreadTest, DestructionRunsWhatWasPosted) {
  int ran = 0;
  absl::Notification release;
  {
    CallbackThread callbacks;
    callbacks.Post([&release] { release.WaitForNotification(); });  // the rest queue behind it
    for (int i = 0; i < 10; ++i) callbacks.Post([&ran] { ++ran; });
    release.Notify();
  }
  EXPECT_EQ(ran, 10);
}

TEST(CallbackThreadTest, PostingFromACallbackRunsLater) {
  std::vector<int> ran;
  CallbackThread callbacks;
  callbacks.Post([&] {
    callbacks.Post([&ran] { ran.push_back(2); });
    ran.push_back(1);
  });
  callbacks.Flush();  // this one may begin before the inner post
  callbacks.Flush();
  EXPECT_EQ(ran, (std::vector<int>{1, 2}));
}

}  // namespace
}  // namespace mlaserve
