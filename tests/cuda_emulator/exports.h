// Appended after the kernel source: for each __global__ function ``k``, xemu_sig_k() names its
// parameters' types ("float32*,int64,...") and xemu_run_k(args) calls it as cuLaunchKernel does,
// each args[i] pointing to the bytes of parameter i.
#pragma once
#include <string>
#include <type_traits>

namespace xemu {
template <class T> struct Name;  // a parameter type without a NumPy dtype fails to compile
#define XEMU_NAME(type, text) \
  template <> struct Name<type> { static const char* get() { return text; } };
XEMU_NAME(float, "float32") XEMU_NAME(double, "float64") XEMU_NAME(bool, "bool")
XEMU_NAME(long long, "int64") XEMU_NAME(long, "int64") XEMU_NAME(int, "int32")
XEMU_NAME(short, "int16") XEMU_NAME(signed char, "int8") XEMU_NAME(char, "int8")
XEMU_NAME(unsigned long long, "uint64") XEMU_NAME(unsigned long, "uint64")
XEMU_NAME(unsigned int, "uint32") XEMU_NAME(unsigned short, "uint16")
XEMU_NAME(unsigned char, "uint8") XEMU_NAME(void, "void")
#undef XEMU_NAME

template <class T> struct Param {
  static void put(std::string& s) { s += Name<T>::get(); }
};
template <class T> struct Param<T*> {
  static void put(std::string& s) { s += Name<typename std::remove_cv<T>::type>::get(); s += '*'; }
};
template <class... A> std::string signature(void (*)(A...)) {
  std::string s;
  int each[] = {0, (Param<A>::put(s), s += ',', 0)...};
  (void)each;
  return s;
}

template <unsigned...> struct Seq {};
template <unsigned N, unsigned... I> struct MakeSeq : MakeSeq<N - 1, N - 1, I...> {};
template <unsigned... I> struct MakeSeq<0, I...> { typedef Seq<I...> type; };
template <class... A, unsigned... I> void call(void (*f)(A...), void** args, Seq<I...>) {
  f(*static_cast<A*>(args[I])...);
}
template <class... A> void invoke(void (*f)(A...), void** args) {
  call(f, args, typename MakeSeq<sizeof...(A)>::type());
}
}  // namespace xemu

#define XEMU_EXPORT(name)                                                   \
  extern "C" const char* xemu_sig_##name() {                                \
    static const std::string s = ::xemu::signature(&name);                  \
    return s.c_str();                                                       \
  }                                                                         \
  extern "C" void xemu_run_##name(void** args) { ::xemu::invoke(&name, args); }
