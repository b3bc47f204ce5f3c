# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'doctor_host'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Read only: whether this host is ready for imaging (`invoke doctor`). That the script runs at all means
    # the endpoint answered over the configured transport, its certificate was accepted and the credentials
    # authenticated. Each check reports ok, what it saw and, when it fails, the fix. Nothing is changed.
    $StorageRoot = 'D:\Imaging'
    $Share = '\\imagestore.controls.example.org\images'
    $NeedBytes = [long]64424509440
    $MaxConcurrent = [int]2
    $Vms = @(@('NDXALF', 'NDXGEM'))
    $checks = New-Object System.Collections.Generic.List[object]
    function Add-Check([string] $Name, [bool] $Ok, [string] $Detail, [string] $Fix) {
        $entry = [ordered]@{ name = $Name; ok = $Ok; detail = $Detail }
        if (-not $Ok) { $entry['fix'] = $Fix }
        $checks.Add($entry)
    }
    Add-Check 'endpoint' $true ("PowerShell {0} on {1} answered as {2}" -f $PSVersionTable.PSVersion, $env:COMPUTERNAME, [Security.Principal.WindowsIdentity]::GetCurrent().Name) ''
    $module = Get-Module -ListAvailable -Name Hyper-V | Sort-Object -Property Version -Descending | Select-Object -First 1
    if ($null -eq $module) {
        Add-Check 'hyper-v module' $false 'the Hyper-V PowerShell module is not installed' 'Install-WindowsFeature -Name Hyper-V-PowerShell (or Hyper-V with -IncludeManagementTools), then run doctor again'
    }
    else {
        $isAdmin = ([Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent()).IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
        $inGroup = @(whoami.exe /groups | Select-String -SimpleMatch 'Hyper-V Administrators').Count -gt 0
        Add-Check 'hyper-v module' ($isAdmin -or $inGroup) ("Hyper-V module {0}; the account is {1}" -f $module.Version, $(if ($isAdmin) { 'an administrator' } elseif ($inGroup) { 'in Hyper-V Administrators' } else { 'neither an administrator nor in Hyper-V Administrators' })) 'add the account to the local Administrators group of the host (mounting disks needs it)'
    }
    if (-not (Test-Path -LiteralPath $StorageRoot -PathType Container)) {
        Add-Check 'storage root' $false "$StorageRoot does not exist" "create $StorageRoot on the host (New-Item -ItemType Directory), or correct storage_root in hosts.yaml"
    }
    else {
        $drive = Get-PSDrive -Name ($StorageRoot.Substring(0, 1))
        $free = [long]$drive.Free
        Add-Check 'storage root' ($free -ge $NeedBytes) ("{0}: {1:N1} GB free, {2:N1} GB needed for the desired releases' images and the reserve" -f $StorageRoot, ($free / 1073741824), ($NeedBytes / 1073741824)) "free space on $StorageRoot, or lower reserve_gb in hosts.yaml"
    }
    # The second hop: this session's credentials do not travel on to the file server without CredSSP or
    # Kerberos delegation, so the share may be out of this session's reach on a correctly set-up host.
    # imaging never needs that hop: staging runs as a scheduled task of SYSTEM and reaches the share as the
    # host's computer account (docs/hyperv.md). Reachable from here: checked. Not reachable: said, not
    # failed; `invoke acceptance` then stages a test image the way staging does, as the computer account.
    $shareOk = $false
    $shareError = ''
    try { $shareOk = Test-Path -LiteralPath $Share -PathType Container -ErrorAction Stop }
    catch { $shareError = $_.Exception.Message }
    if ($shareOk) { Add-Check 'image share' $true ("{0} is reachable from {1}" -f $Share, $env:COMPUTERNAME) '' }
    else {
        Add-Check 'image share' $true ('{0} is not reachable from this session{1}: the second hop (no CredSSP or Kerberos delegation), which staging does not use: it reads the share as the computer account {2}$; invoke acceptance proves that path' -f $Share, $(if ($shareError) { " ($shareError)" } else { '' }), $env:COMPUTERNAME) ''
    }
    $shells = [int](Get-Item -Path 'WSMan:\localhost\Shell\MaxShellsPerUser').Value
    $memory = [int](Get-Item -Path 'WSMan:\localhost\Shell\MaxMemoryPerShellMB').Value
    $envelope = [int](Get-Item -Path 'WSMan:\localhost\MaxEnvelopeSizekb').Value
    $quotaOk = ($shells -ge ($MaxConcurrent + 1)) -and ($memory -eq 0 -or $memory -ge 1024) -and ($envelope -ge 500)
    Add-Check 'winrm quotas' $quotaOk ("MaxShellsPerUser {0} (needs {1}), MaxMemoryPerShellMB {2} (needs 1024), MaxEnvelopeSizekb {3} (needs 500)" -f $shells, ($MaxConcurrent + 1), $memory, $envelope) ("Set-Item WSMan:\localhost\Shell\MaxShellsPerUser {0}; Set-Item WSMan:\localhost\Shell\MaxMemoryPerShellMB 1024; Set-Item WSMan:\localhost\MaxEnvelopeSizekb 500" -f ($MaxConcurrent + 1))
    $present = [ordered]@{}
    foreach ($name in $Vms) {
        $vm = Get-VM -Name $name -ErrorAction SilentlyContinue
        $present[[string]$name] = $(if ($null -eq $vm) { 'Absent' } else { [string]$vm.State })
    }
    $Result['checks'] = @($checks.ToArray())
    $Result['vms'] = $present
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
