// Bench-only build shim: libjstl passes `const js_value_t *[]` where bare-compat-napi 1.4.1
// declares `js_value_t *const []` (same pointers, different const placement).
#pragma once
#include <js.h>
static inline int
js_set_array_elements(js_env_t *env, js_value_t *array, const js_value_t *elements[], size_t len, size_t offset) {
  return js_set_array_elements(env, array, (js_value_t *const *) elements, len, offset);
}
