// Compile-only stand-ins for the parts of UnityEngine, NativeWebSocket, Newtonsoft JSON and UniVRM 1.0
// that the koe scripts use, with the signatures of the real libraries. koe's tests compile the scripts
// against them with Mono's `mcs` (tests/test_ws_protocol.py), so a misspelt member or a wrong argument
// type fails in CI, not in Unity. Unity ignores folders whose name ends in `~`: do not copy this one.
#pragma warning disable 67, 649
using System;
using System.Collections.Generic;
using System.Threading.Tasks;

namespace UnityEngine
{
    public class Object { }
    public class Component : Object { public T GetComponent<T>() => default(T); }
    public class Behaviour : Component { public bool enabled { get; set; } }
    public class MonoBehaviour : Behaviour
    {
        public void Invoke(string methodName, float time) { }
        public void CancelInvoke(string methodName) { }
    }

    [AttributeUsage(AttributeTargets.Class, AllowMultiple = true)]
    public sealed class RequireComponent : Attribute { public RequireComponent(Type requiredComponent) { } }

    [AttributeUsage(AttributeTargets.Field)]
    public sealed class TooltipAttribute : Attribute { public TooltipAttribute(string tooltip) { } }

    public sealed class AudioClip : Object
    {
        public int samples { get; }
        public static AudioClip Create(string name, int lengthSamples, int channels, int frequency, bool stream) => null;
        public bool GetData(float[] data, int offsetSamples) => true;
    }

    public sealed class AudioSource : Behaviour
    {
        public bool playOnAwake { get; set; }
        public bool loop { get; set; }
        public AudioClip clip { get; set; }
        public void Play() { }
    }

    public sealed class AudioSettings { public static int outputSampleRate { get; } }

    public sealed class Microphone
    {
        public static AudioClip Start(string deviceName, bool loop, int lengthSec, int frequency) => null;
        public static int GetPosition(string deviceName) => 0;
        public static void End(string deviceName) { }
    }

    public enum KeyCode { None = 0, Space = 32 }

    public sealed class Input
    {
        public static bool GetKey(KeyCode key) => false;
        public static bool GetKeyDown(KeyCode key) => false;
        public static bool GetKeyUp(KeyCode key) => false;
    }

    public sealed class Time
    {
        public static float deltaTime { get; }
        public static float unscaledTime { get; }
    }

    public struct Mathf
    {
        public static int Min(int a, int b) => Math.Min(a, b);
        public static float Lerp(float a, float b, float t) => a + (b - a) * t;
        public static float Exp(float power) => (float)Math.Exp(power);
        public static float Clamp(float value, float min, float max) => Math.Max(min, Math.Min(max, value));
    }

    public sealed class Debug { public static void LogWarning(object message) { } }
}

namespace NativeWebSocket
{
    public delegate void WebSocketOpenEventHandler();
    public delegate void WebSocketMessageEventHandler(byte[] data);
    public delegate void WebSocketErrorEventHandler(string errorMsg);
    public delegate void WebSocketCloseEventHandler(WebSocketCloseCode closeCode);

    public enum WebSocketCloseCode { NotSet = 0, Normal = 1000, ProtocolError = 1002, PolicyViolation = 1008 }
    public enum WebSocketState { Connecting, Open, Closing, Closed }

    public class WebSocket
    {
        public event WebSocketOpenEventHandler OnOpen;
        public event WebSocketMessageEventHandler OnMessage;
        public event WebSocketErrorEventHandler OnError;
        public event WebSocketCloseEventHandler OnClose;
        public WebSocket(string url, Dictionary<string, string> headers = null) { }
        public WebSocketState State { get; }
        public Task Connect() => Task.CompletedTask;
        public Task Close(WebSocketCloseCode code = WebSocketCloseCode.Normal, string reason = null) => Task.CompletedTask;
        public Task Send(byte[] bytes) => Task.CompletedTask;
        public Task SendText(string message) => Task.CompletedTask;
        public void DispatchMessageQueue() { }
    }
}

namespace Newtonsoft.Json
{
    public enum Formatting { None = 0, Indented = 1 }
}

namespace Newtonsoft.Json.Linq
{
    public abstract class JToken
    {
        public virtual JToken this[object key] { get => null; set { } }
        public T ToObject<T>() => default(T);
        public string ToString(Formatting formatting) => "";
        public static implicit operator JToken(string value) => null;
        public static implicit operator JToken(bool value) => null;
        public static implicit operator JToken(int value) => null;
        public static implicit operator JToken(uint value) => null;
        public static implicit operator JToken(float value) => null;
        public static explicit operator string(JToken value) => null;
        public static explicit operator bool(JToken value) => false;
        public static explicit operator int(JToken value) => 0;
        public static explicit operator uint(JToken value) => 0;
        public static explicit operator float(JToken value) => 0;
    }

    public abstract class JContainer : JToken { }

    public class JObject : JContainer
    {
        public JToken this[string propertyName] { get => null; set { } }
        public static JObject Parse(string json) => new JObject();
    }

    public class JArray : JContainer
    {
        public JArray(params object[] content) { }
        public void Add(JToken item) { }
    }
}

namespace UniVRM10
{
    public enum ExpressionPreset
    {
        custom, happy, angry, sad, relaxed, surprised, aa, ih, ou, ee, oh,
        blink, blinkLeft, blinkRight, lookUp, lookDown, lookLeft, lookRight, neutral,
    }

    public struct ExpressionKey
    {
        public static ExpressionKey CreateCustom(string key) => default(ExpressionKey);
        public static ExpressionKey CreateFromPreset(ExpressionPreset preset) => default(ExpressionKey);
    }

    public sealed class Vrm10RuntimeExpression { public void SetWeight(ExpressionKey expressionKey, float weight) { } }
    public sealed class Vrm10Runtime { public Vrm10RuntimeExpression Expression { get; } }
    public class Vrm10Instance : UnityEngine.MonoBehaviour { public Vrm10Runtime Runtime { get; } }
}
