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

$ImagingAction = 'export_image'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Copies an image the build host made onto the image share, so that the operator's machine can take it
    # into the artifact store as a plain file copy (never over WinRM). The image is hashed before the copy
    # (it must be the one the build reported) and the copy after it; the copy goes to a temporary name and
    # is renamed only when both agree, so the share never holds a half-written image under its real name.
    $Path = 'D:\Imaging\builds\apps-2026C3.3.vhdx'
    $SharePath = '\\imagestore.controls.example.org\images\apps-2026C3.3-0123456789ab.vhdx'
    $Sha256 = '0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'
    if (-not (Test-Path -LiteralPath $Path -PathType Leaf)) { throw "$Path does not exist on this host" }
    $Result['path'] = $SharePath
    $Result['sha256'] = $Sha256
    if (Test-Path -LiteralPath $SharePath -PathType Leaf) {
        if ((Get-ImagingSha256 -Path $SharePath) -eq $Sha256) {
            $Result['size'] = (Get-Item -LiteralPath $SharePath).Length
            return
        }
    }
    $source = Get-ImagingSha256 -Path $Path
    if ($source -ne $Sha256) { throw "$Path has sha256 $source, not $Sha256 as the build reported" }
    $partial = "$SharePath.partial"
    Copy-Item -LiteralPath $Path -Destination $partial -Force
    $copied = Get-ImagingSha256 -Path $partial
    if ($copied -ne $Sha256) {
        Remove-Item -LiteralPath $partial -Force
        throw "the copy on the share has sha256 $copied, not $Sha256; the share or the network corrupted it"
    }
    Move-Item -LiteralPath $partial -Destination $SharePath -Force
    $Result['size'] = (Get-Item -LiteralPath $SharePath).Length
    $Result['changed'] = $true
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
